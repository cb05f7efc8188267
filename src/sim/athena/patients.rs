//! Patient reads: the demographics record (a one-element array, as athena answers) and the insurance list.

use http::StatusCode;
use serde_json::{Value, json};

use super::images::Slot;
use super::query::{Query, add_paging_links, paging};
use super::seed::{DEMO_DEPARTMENT_ID, DEMO_PATIENT_ID, Insurance, UNASSIGNED_PATIENT_ID, insurances};
use super::{State, listed};
use crate::sim::support::{SimResponse, json_response};

const LIST_LIMIT_DEFAULT: usize = 1500;
const LIST_LIMIT_MAX: usize = 5000;

impl State {
    pub(super) fn get_patient(&self, pid: &str, query: &Query) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        self.note_unlisted("GET /patients/{patientid}", query.names(), listed::PATIENT_GET);
        let mut patient = json!({
            "patientid": pid,
            "firstname": "Jane",
            "lastname": "Sandbox",
            "sex": "F",
            "dob": "01/15/1980",
            "status": "active",
            "departmentid": DEMO_DEPARTMENT_ID,
            "primarydepartmentid": DEMO_DEPARTMENT_ID,
            "registrationdate": "03/02/2015",
            "primaryproviderid": "71",
            "countrycode3166": "US",
            "homephone": "6175551234",
        });
        if pid == UNASSIGNED_PATIENT_ID {
            for field in ["departmentid", "primarydepartmentid", "primaryproviderid"] {
                patient.as_object_mut().map(|p| p.remove(field));
            }
            patient["firstname"] = json!("John");
        }
        if !query.flag("omitphotoinformation") {
            let has_photo = self.data().images.contains_key(&(pid.to_owned(), Slot::Photo));
            patient["patientphoto"] = json!(if has_photo { "true" } else { "false" });
            if has_photo {
                patient["patientphotourl"] = json!(format!("/v1/{}/patients/{pid}/photo", self.practice_id));
            }
        }
        // Single-record GETs answer a JSON array (athena.md §5, Metriport takes [0]).
        json_response(StatusCode::OK, &json!([patient]))
    }

    pub(super) fn list_insurances(&self, pid: &str, query: &Query, path: &str) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        self.note_unlisted("GET /patients/{patientid}/insurances", query.names(), listed::INSURANCE_LIST);
        let (limit, offset) = match paging(query, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX) {
            Ok(paging) => paging,
            Err(response) => return *response,
        };
        let show_cancelled = query.flag("showcancelled");
        let own = pid == DEMO_PATIENT_ID;
        let items: Vec<Value> = insurances()
            .iter()
            .filter(|ins| own && (show_cancelled || !ins.cancelled))
            .map(Insurance::render)
            .collect();
        let total = items.len();
        let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
        let mut body = json!({"insurances": page, "totalcount": total});
        add_paging_links(&mut body, path, query, limit, offset, total);
        json_response(StatusCode::OK, &body)
    }
}
