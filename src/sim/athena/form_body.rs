//! Write bodies as athena reads them: form-urlencoded or multipart fields; any other content type is "no fields".

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::request::Parts;
use http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::responses::{Refusal, invalid_data, plain_response};

const MAX_BODY: usize = 64 * 1024 * 1024;

/// A parsed write body. Keys are lower-cased. Multipart file parts land in `files` as raw bytes.
#[derive(Default)]
pub(super) struct FormBody {
    text: HashMap<String, String>,
    files: HashMap<String, Bytes>,
}

impl FormBody {
    /// A non-empty text field.
    pub(super) fn text(&self, name: &str) -> Option<&str> {
        self.text.get(name).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// Every field name, text or file.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.text.keys().chain(self.files.keys()).map(String::as_str)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.text.contains_key(name) || self.files.contains_key(name)
    }

    /// A binary field: raw bytes from a multipart file part, else the base64 text of the field.
    pub(super) fn binary(&self, name: &str) -> Result<Option<Bytes>, Refusal> {
        if let Some(bytes) = self.files.get(name) {
            return Ok(Some(bytes.clone()).filter(|b| !b.is_empty()));
        }
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match BASE64.decode(compact.as_bytes()) {
            Ok(bytes) if !bytes.is_empty() => Ok(Some(Bytes::from(bytes))),
            _ => Err(Box::new(invalid_data(&format!("The {name} field is not valid base64.")))),
        }
    }
}

/// Reads a write body. Form-urlencoded and multipart bodies are parsed; any other content type (JSON, none) is read
/// as "no fields", which is what athena makes of it, so required fields then come back as `missingfields`.
pub(super) async fn read_form(parts: &Parts, body: Incoming) -> Result<FormBody, Refusal> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<LengthLimitError>() => {
            return Err(Box::new(plain_response(StatusCode::PAYLOAD_TOO_LARGE, "Request entity too large.")));
        }
        Err(_) => return Err(Box::new(invalid_data("The request body could not be read."))),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let mut form = FormBody::default();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => {
            for (key, value) in form_urlencoded::parse(&bytes) {
                form.text.insert(key.to_ascii_lowercase(), value.into_owned());
            }
        }
        "multipart/form-data" => {
            let Some(boundary) = content_type.split(';').skip(1).find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
            }) else {
                return Err(Box::new(invalid_data("The multipart body has no boundary.")));
            };
            if !parse_multipart(&bytes, &boundary, &mut form) {
                return Err(Box::new(invalid_data("The multipart body could not be parsed.")));
            }
        }
        _ => {}
    }
    Ok(form)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Minimal multipart/form-data parser: named parts with a filename (or a non-text content type) are files (raw
/// bytes); others are text fields. Returns false on a malformed body.
fn parse_multipart(body: &[u8], boundary: &str, form: &mut FormBody) -> bool {
    if boundary.is_empty() {
        return false;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let Some(mut start) = find(body, &delimiter, 0) else {
        return false;
    };
    loop {
        let after = start + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return true;
        }
        let Some(next) = find(body, &delimiter, after) else {
            return false;
        };
        let part = &body[after..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n", 0) else {
            return false;
        };
        let headers = String::from_utf8_lossy(&part[..split]);
        let content = &part[split + 4..];
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in headers.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            if key.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    if let Some((k, v)) = param.split_once('=') {
                        let v = v.trim().trim_matches('"').to_owned();
                        match k.trim().to_ascii_lowercase().as_str() {
                            "name" => name = Some(v.to_ascii_lowercase()),
                            "filename" => filename = Some(v),
                            _ => {}
                        }
                    }
                }
            } else if key.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_ascii_lowercase());
            }
        }
        let Some(name) = name else {
            return false;
        };
        let is_file = filename.is_some() || content_type.as_ref().is_some_and(|ct| !ct.starts_with("text/"));
        if is_file {
            form.files.insert(name, Bytes::copy_from_slice(content));
        } else {
            form.text.insert(name, String::from_utf8_lossy(content).into_owned());
        }
        start = next;
    }
}
