//! The front door: token requests versus API requests, request counting, the bearer and practice checks, routing
//! of `/v1/{practiceid}` paths to their handlers, and the patient, department and insurance checks they share.

use http::request::Parts;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::State;
use super::auth::TOKEN_PATH;
use super::document_classes::{DocClass, DocumentList};
use super::form_body::{FormBody, read_form};
use super::images::Slot;
use super::listed;
use super::query::Query;
use super::responses::{
    Refusal, athena_error, clip, gateway_not_registered, invalid_data, invalid_path, invalid_practice,
    method_not_allowed,
};
use super::seed::{DEMO_DEPARTMENT_ID, DEMO_PATIENT_ID, OTHER_DEPARTMENT_ID, UNASSIGNED_PATIENT_ID, insurances};
use crate::sim::support::{HandlerResult, SimResponse, json_response};

/// Counts an API request as in flight for as long as it lives.
struct InFlightRequest<'a> {
    state: &'a State,
}

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        let mut data = self.state.data();
        data.in_flight_requests = data.in_flight_requests.saturating_sub(1);
    }
}

impl State {
    pub(super) async fn handle(&self, req: Request<Incoming>) -> HandlerResult {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        if path.starts_with("/oauth2/") {
            if method == Method::POST && path == TOKEN_PATH {
                self.data().stats.token_requests += 1;
            }
            let response = match self.apply_fault(&method, &path).await? {
                Some(response) => response,
                None => self.token_endpoint(req, &method, &path).await,
            };
            tracing::debug!(host = "athena", %method, path, status = response.status().as_u16(), "sim");
            return Ok(response);
        }
        let _in_flight = self.enter_request();
        let response = match self.apply_fault(&method, &path).await? {
            Some(response) => response,
            None => {
                let response = self.route_api(req, &method, &path).await;
                self.apply_after_fault(&method, &path, response).await?
            }
        };
        tracing::debug!(host = "athena", %method, path, status = response.status().as_u16(), "sim");
        Ok(response)
    }

    fn enter_request(&self) -> InFlightRequest<'_> {
        let mut data = self.data();
        data.stats.requests += 1;
        data.in_flight_requests += 1;
        data.stats.max_concurrent_requests = data.stats.max_concurrent_requests.max(data.in_flight_requests);
        InFlightRequest { state: self }
    }

    async fn route_api(&self, req: Request<Incoming>, method: &Method, path: &str) -> SimResponse {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return gateway_not_registered();
        };
        if let Err(response) = self.check_bearer(req.headers()) {
            return *response;
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let Some((practice, segments)) = segments.split_first() else {
            return invalid_practice();
        };
        if *practice != self.practice_id {
            return invalid_practice();
        }
        let (parts, body) = req.into_parts();
        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let m = method.clone();
        match segments {
            ["ping"] => match m {
                Method::GET => json_response(StatusCode::OK, &json!({"Pong": "true"})),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid] => match m {
                Method::GET => self.get_patient(pid, &query),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "insurances"] => match m {
                Method::GET => self.list_insurances(pid, &query, path),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "insurances", "prescription", "card"] => match m {
                // athena lists only POST ("add or update") for the prescription card.
                Method::GET | Method::POST | Method::DELETE => {
                    self.image_methods(pid, Slot::PrescriptionCard, &m, &query, &parts, body).await
                }
                _ => method_not_allowed("GET, POST, DELETE"),
            },
            ["patients", pid, "insurances", insuranceid, "image"] => {
                if let Err(response) = self.check_insurance(pid, insuranceid) {
                    return *response;
                }
                let slot = Slot::InsuranceCard((*insuranceid).to_owned());
                self.image_methods(pid, slot, &m, &query, &parts, body).await
            }
            ["patients", pid, "photo"] => self.image_methods(pid, Slot::Photo, &m, &query, &parts, body).await,
            ["patients", pid, "photo", "thumbnail"] => match m {
                // The simulator cannot scale; the thumbnail is the stored photo.
                Method::GET => {
                    self.note_unlisted("GET /patients/{patientid}/photo/thumbnail", query.names(), listed::IMAGE_GET);
                    self.get_image(pid, &Slot::Photo, &query, &parts)
                }
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "driverslicense"] => {
                self.image_methods(pid, Slot::DriversLicense, &m, &query, &parts, body).await
            }
            // athena's generic (older) list across classes; its generic create is not simulated.
            ["patients", pid, "documents"] => match m {
                Method::GET => self.list_documents(pid, DocumentList::Generic, &query, path),
                _ => method_not_allowed("GET"),
            },
            ["patients", pid, "documents", cls] => {
                let Some(class) = DocClass::from_segment(cls) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.list_documents(pid, DocumentList::Class(class), &query, path),
                    Method::POST => self.create_document(pid, class, &parts, body).await,
                    _ => method_not_allowed("GET, POST"),
                }
            }
            ["patients", pid, "documents", cls, id] => {
                let (Some(class), Ok(id)) = (DocClass::from_segment(cls), id.parse::<u64>()) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_document(pid, class, id, &query),
                    Method::PUT => self.update_document(pid, class, id, &parts, body).await,
                    Method::DELETE => self.delete_document(pid, class, id),
                    _ => method_not_allowed("GET, PUT, DELETE"),
                }
            }
            ["patients", pid, "documents", cls, id, "pages", page] => {
                let (Some(class), Ok(id), Ok(page)) =
                    (DocClass::from_segment(cls), id.parse::<u64>(), page.parse::<u64>())
                else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_page(pid, class, id, page, &query),
                    _ => method_not_allowed("GET"),
                }
            }
            ["patients", pid, "documents", cls, id, "originaldocument"] => {
                let (Some(class), Ok(id)) = (DocClass::from_segment(cls), id.parse::<u64>()) else {
                    return invalid_path();
                };
                match m {
                    Method::GET => self.get_original(pid, class, id, &query),
                    _ => method_not_allowed("GET"),
                }
            }
            _ => invalid_path(),
        }
    }

    /// The form body of a write to a patient's record, once the patient is known to exist (athena checks
    /// the patient before it reads the body).
    pub(super) async fn patient_form(&self, pid: &str, parts: &Parts, body: Incoming) -> Result<FormBody, Refusal> {
        self.check_patient(pid)?;
        read_form(parts, body).await
    }

    pub(super) fn check_patient(&self, pid: &str) -> Result<(), Refusal> {
        if pid == DEMO_PATIENT_ID || pid == UNASSIGNED_PATIENT_ID {
            Ok(())
        } else if pid.parse::<u64>().is_err() {
            Err(Box::new(invalid_data(&format!(
                "Expecting format integer for patientid, but value is '{}'.",
                clip(pid)
            ))))
        } else {
            Err(Box::new(athena_error(
                StatusCode::NOT_FOUND,
                "Patient not found.",
                Some("The patient ID does not exist."),
            )))
        }
    }

    /// `departmentid` must be an integer, a department of the practice, and one the patient is registered in.
    pub(super) fn check_department(&self, department: &str) -> Result<(), Refusal> {
        let department = department.trim();
        if department.parse::<u64>().is_err() {
            return Err(Box::new(invalid_data(&format!(
                "Expecting format integer for departmentid, but value is '{}'.",
                clip(department)
            ))));
        }
        if department == DEMO_DEPARTMENT_ID {
            Ok(())
        } else if department == OTHER_DEPARTMENT_ID {
            let message = "The specified patient does not exist in that department.";
            Err(Box::new(athena_error(StatusCode::BAD_REQUEST, message, Some(message))))
        } else {
            Err(Box::new(athena_error(
                StatusCode::BAD_REQUEST,
                "Invalid departmentid.",
                Some("The department does not exist."),
            )))
        }
    }

    pub(super) fn check_insurance(&self, pid: &str, insuranceid: &str) -> Result<(), Refusal> {
        self.check_patient(pid)?;
        if pid == DEMO_PATIENT_ID && insurances().iter().any(|ins| ins.id == insuranceid) {
            Ok(())
        } else {
            Err(Box::new(athena_error(
                StatusCode::NOT_FOUND,
                "Invalid insuranceid.",
                Some("The insurance does not exist."),
            )))
        }
    }
}
