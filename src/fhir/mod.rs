//! FHIR R4 pieces every layer may use: OperationOutcome rendering, Media validation, primitive formats,
//! content types.

pub mod outcome;
pub mod primitive;
pub mod validate;

/// Media types the front door accepts for FHIR JSON bodies.
pub const FHIR_JSON_TYPES: &[&str] = &["application/fhir+json", "application/json", "application/json+fhir"];

/// The media type of every FHIR JSON response.
pub const FHIR_JSON: &str = "application/fhir+json";

/// True when a `Content-Type` header value names one of the accepted FHIR JSON types (parameters such as
/// `charset` and `fhirVersion` are allowed).
pub fn is_fhir_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    FHIR_JSON_TYPES.contains(&essence.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_fhir_json_types_with_parameters() {
        assert!(is_fhir_json("application/fhir+json; fhirVersion=4.0"));
        assert!(is_fhir_json("Application/JSON;charset=utf-8"));
        assert!(is_fhir_json("application/json+fhir"));
        assert!(!is_fhir_json("application/xml"));
        assert!(!is_fhir_json("text/plain"));
        assert!(!is_fhir_json(""));
    }
}
