//! The image slots of a patient (insurance cards, prescription card, photo, driver's licence): read as base64 JSON or
//! raw bytes, upload, delete.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use super::State;
use super::listed;
use super::query::Query;
use super::responses::{athena_error, invalid_data, method_not_allowed, missing_fields, success};
use crate::sim::support::{SimResponse, json_response};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Slot {
    InsuranceCard(String),
    PrescriptionCard,
    Photo,
    DriversLicense,
}

impl Slot {
    /// athena.md: the insurance card and licence POSTs answer a JSON boolean; the photo and prescription-card bodies
    /// were not seen, so the simulator answers those with the string form to keep gateways lenient.
    fn stringly(&self) -> bool {
        matches!(self, Self::PrescriptionCard | Self::Photo)
    }

    /// The slot's path, as the ignored-parameter record names it.
    fn path(&self) -> &'static str {
        match self {
            Self::InsuranceCard(_) => "/patients/{patientid}/insurances/{insuranceid}/image",
            Self::PrescriptionCard => "/patients/{patientid}/insurances/prescription/card",
            Self::Photo => "/patients/{patientid}/photo",
            Self::DriversLicense => "/patients/{patientid}/driverslicense",
        }
    }

    /// The upload's fields: the prescription card takes no department.
    fn upload_fields(&self) -> &'static [&'static str] {
        match self {
            Self::PrescriptionCard => listed::PRESCRIPTION_CARD_UPLOAD,
            _ => listed::IMAGE_UPLOAD,
        }
    }
}

impl State {
    pub(super) async fn image_methods(
        &self,
        pid: &str,
        slot: Slot,
        method: &Method,
        query: &Query,
        parts: &Parts,
        body: Incoming,
    ) -> SimResponse {
        let endpoint = format!("{method} {}", slot.path());
        match *method {
            Method::GET => {
                self.note_unlisted(&endpoint, query.names(), listed::IMAGE_GET);
                self.get_image(pid, &slot, query, parts)
            }
            // POST and PUT do the same thing for images (athena.md §2).
            Method::POST | Method::PUT => self.put_image(pid, slot, parts, body).await,
            Method::DELETE => {
                self.note_unlisted(&endpoint, query.names(), listed::NOTHING);
                self.delete_image(pid, &slot)
            }
            _ => method_not_allowed("GET, POST, PUT, DELETE"),
        }
    }

    pub(super) fn get_image(&self, pid: &str, slot: &Slot, query: &Query, parts: &Parts) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        let Some(bytes) = self.data().images.get(&(pid.to_owned(), slot.clone())).cloned() else {
            return athena_error(StatusCode::NOT_FOUND, "No image found.", Some("There is no image for this patient."));
        };
        let wants_raw = query.flag("jpegoutput")
            || parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.to_ascii_lowercase().contains("image/jpeg"));
        if wants_raw {
            let content_type = sniff_image(&bytes).unwrap_or("image/jpeg");
            let mut response = Response::new(Full::new(bytes));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return response;
        }
        json_response(StatusCode::OK, &json!({"image": BASE64.encode(&bytes)}))
    }

    pub(super) async fn put_image(&self, pid: &str, slot: Slot, parts: &Parts, body: Incoming) -> SimResponse {
        let form = match self.patient_form(pid, parts, body).await {
            Ok(form) => form,
            Err(response) => return *response,
        };
        let endpoint = format!("{} {}", parts.method, slot.path());
        self.note_unlisted(&endpoint, form.names(), slot.upload_fields());
        let image = match form.binary("image") {
            Ok(Some(image)) => image,
            Ok(None) => return missing_fields(&["image"]),
            Err(response) => return *response,
        };
        if slot.upload_fields().contains(&"departmentid")
            && let Some(department) = form.text("departmentid")
            && let Err(response) = self.check_department(department)
        {
            return *response;
        }
        if sniff_image(&image).is_none() {
            return invalid_data("The image could not be read; send a base64-encoded image.");
        }
        let stringly = slot.stringly();
        self.data().images.insert((pid.to_owned(), slot), image);
        json_response(StatusCode::OK, &success(stringly, true))
    }

    pub(super) fn delete_image(&self, pid: &str, slot: &Slot) -> SimResponse {
        if let Err(response) = self.check_patient(pid) {
            return *response;
        }
        match self.data().images.remove(&(pid.to_owned(), slot.clone())) {
            Some(_) => json_response(StatusCode::OK, &success(slot.stringly(), true)),
            None => athena_error(StatusCode::NOT_FOUND, "No image found.", Some("There is no image for this patient.")),
        }
    }
}

fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        Some("image/png")
    } else if bytes.starts_with(b"GIF8") {
        Some("image/gif")
    } else if bytes.starts_with(b"BM") {
        Some("image/bmp")
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Some("image/tiff")
    } else {
        None
    }
}
