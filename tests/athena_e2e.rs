//! athenahealth end to end: the real gateway over loopback HTTP in front of the athena simulator, through
//! the front door, for every category: create, read with exact bytes, paged search, update and delete; what athena
//! cannot do refused before it is asked, and document updates that append exactly once, faults or not.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;
use ehr_gateway::sim::athena::{
    AthenaSimConfig, AthenaSimHandle, DEMO_ADMIN_DOCUMENT_IDS, DEMO_CLINICAL_DOCUMENT_IDS, Fault, FaultAction,
    UNASSIGNED_PATIENT_ID,
};
use reqwest::Method;
use serde_json::{Value, json};

const FHIR: &str = "application/fhir+json";
const XC: &str = "http://xcaliber-fhir/structureDefinition/";

/// Different real images of the same shape: tests/fixtures/pixel.jpg with a comment segment carrying `tag`
/// (athena stores what it is given).
fn jpeg(tag: &str) -> Vec<u8> {
    let pixel = include_bytes!("fixtures/pixel.jpg");
    let mut bytes = pixel[..2].to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(&u16::try_from(tag.len() + 2).unwrap().to_be_bytes());
    bytes.extend_from_slice(tag.as_bytes());
    bytes.extend_from_slice(&pixel[2..]);
    bytes
}

fn pdf(tag: &str) -> Vec<u8> {
    format!("%PDF-1.4\n% {tag}\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n").into_bytes()
}

fn image_media(bytes: &[u8], extra: Value) -> Value {
    let mut media = json!({
        "resourceType": "Media",
        "status": "completed",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "content": {"contentType": "image/jpeg", "data": BASE64.encode(bytes)}
    });
    if let (Some(m), Some(e)) = (media.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    media
}

fn document_media(bytes: &[u8], subclass: Option<&str>) -> Value {
    let mut media = json!({
        "resourceType": "Media",
        "status": "in-progress",
        "subject": {"reference": format!("Patient/{ATHENA_PATIENT}")},
        "operator": {"reference": "Practitioner/71"},
        "createdDateTime": "2024-05-06T10:00:00Z",
        "content": {"contentType": "application/pdf", "data": BASE64.encode(bytes), "title": "Scanned form"},
        "extension": [
            {"url": format!("{XC}priority"), "valueInteger": 2},
            {"url": format!("{XC}internal-note"), "valueString": "filed by the gateway test"}
        ]
    });
    if let Some(subclass) = subclass {
        media["modality"] =
            json!({"coding": [{"system": "https://docs.athenahealth.com/api/documentsubclass", "code": subclass}]});
    }
    media
}

fn extension<'a>(media: &'a Value, name: &str) -> Option<&'a Value> {
    media["extension"].as_array()?.iter().find(|e| e["url"] == format!("{XC}{name}"))
}

fn extension_index(media: &Value, name: &str) -> usize {
    media["extension"].as_array().unwrap().iter().position(|e| e["url"] == format!("{XC}{name}")).unwrap()
}

/// athena ignores the parameters and fields it does not list for an endpoint: the gateway must send none of them
/// (whatever it meant by one would silently not happen).
fn assert_only_listed_parameters(sim: &AthenaSimHandle) {
    let ignored = sim.stats().ignored_parameters;
    assert!(ignored.is_empty(), "sent to athena, which does not read them: {ignored:#?}");
}

/// A gateway config that reaches `sim` as a real athena connection at `base_url` (gateway B of a test).
fn real_connection(sim: &AthenaSimHandle, base_url: &str) -> String {
    let secret = std::env::temp_dir().join(format!("athena-secret-{}", std::process::id()));
    std::fs::write(&secret, AthenaSimConfig::default().client_secret).unwrap();
    athena_config("").replace(
        "ehr = \"athena\"\nsimulator = true",
        &format!(
            "ehr = \"athena\"\nbase_url = \"{base_url}\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = {{ file = \"{}\" }}\nparams = {{ practice = \"195900\" }}",
            sim.token_url(),
            AthenaSimConfig::default().client_id,
            secret.display()
        ),
    )
}

async fn patch(client: &reqwest::Client, url: &str, operations: Value) -> (u16, Value) {
    let (status, _, body) = send_json(client, Method::PATCH, url, "application/json-patch+json", &operations).await;
    (status, body)
}

/// The ids of each page of a search, following next links.
async fn walk(client: &reqwest::Client, first: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut url = Some(first.to_string());
    while let Some(u) = url {
        let (status, bundle) = get_json(client, &u).await;
        assert_eq!(status, 200, "{bundle}");
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        pages.push(entries.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect());
        url = bundle["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str().map(str::to_string));
        assert!(pages.len() < 100, "paging does not end");
    }
    pages
}

async fn gateway() -> (ehr_gateway::server::Running, AthenaSimHandle, String, reqwest::Client) {
    let gw = start_with(&athena_config("")).await;
    let sim = gw.athena_sim("demo-athena").expect("athena simulator").clone();
    let base = athena_base(&gw);
    (gw, sim, base, http())
}

/// Every page of a search with `_count=1`, asserting each page holds at most one entry.
async fn pages(client: &reqwest::Client, first: &str) -> (usize, Vec<String>) {
    let mut ids = Vec::new();
    let mut url = Some(first.to_string());
    let mut count = 0;
    while let Some(u) = url {
        let (status, bundle) = get_json(client, &u).await;
        assert_eq!(status, 200, "{bundle}");
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 1, "{bundle}");
        ids.extend(entries.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()));
        url = bundle["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str().map(str::to_string));
        count += 1;
        assert!(count < 100, "paging does not end");
    }
    (count, ids)
}

#[tokio::test]
async fn insurance_cards_create_read_bytes_page_update_and_delete() {
    let (_gw, sim, base, client) = gateway().await;
    // The secondary and tertiary insurances get cards; the primary has one from the seed.
    let mut ids = Vec::new();
    for (insurance, tag) in [("5679", "second"), ("5680", "third")] {
        let media = image_media(&jpeg(tag), json!({"partOf": [{"reference": format!("Coverage/{insurance}")}]}));
        let (status, headers, created) =
            send_json(&client, Method::POST, &format!("{base}/Media?category=insurance-card"), FHIR, &media).await;
        assert_eq!(status, 201, "{created}");
        let id = format!("ic.195900.1234.{insurance}");
        assert_eq!(created["id"], id);
        assert_eq!(headers["location"], format!("{base}/Media/{id}").as_str());
        assert_eq!(created["partOf"][0]["reference"], format!("Coverage/{insurance}"));
        assert_eq!(created["content"]["contentType"], "image/jpeg");
        let (status, content_type, bytes) = get_bytes(&client, created["content"]["url"].as_str().unwrap()).await;
        assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
        assert_eq!(bytes, jpeg(tag), "the content URL gives back exactly the uploaded image");
        ids.push(id);
    }
    // Without partOf the card goes to the primary insurance (looked up, then cached).
    let (status, _, primary) = send_json(
        &client,
        Method::POST,
        &format!("{base}/Media"),
        FHIR,
        &image_media(
            &jpeg("primary"),
            json!({"extension": [{"url": format!("{XC}appointment-category"), "valueCode": "insurance-card"}]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{primary}");
    assert_eq!(primary["id"], "ic.195900.1234.5678");

    let (count, found) =
        pages(&client, &format!("{base}/Media?patient=Patient/1234&category=insurance-card&_count=1")).await;
    assert!(count >= 3, "three cards over three pages, got {count}");
    assert_eq!(found, vec!["ic.195900.1234.5678", "ic.195900.1234.5679", "ic.195900.1234.5680"]);

    // Update replaces the image in its slot.
    let mut replacement = get_json(&client, &format!("{base}/Media/{}", ids[0])).await.1;
    replacement["content"]["data"] = json!(BASE64.encode(jpeg("replaced")));
    let (status, _, updated) =
        send_json(&client, Method::PUT, &format!("{base}/Media/{}", ids[0]), FHIR, &replacement).await;
    assert_eq!(status, 200, "{updated}");
    let (_, _, bytes) = get_bytes(&client, &format!("{base}/Media/{}/$content", ids[0])).await;
    assert_eq!(bytes, jpeg("replaced"));
    // Moving the card to another insurance is not an update athena can do.
    replacement["partOf"] = json!([{"reference": "Coverage/5680"}]);
    let (status, _, outcome) =
        send_json(&client, Method::PUT, &format!("{base}/Media/{}", ids[0]), FHIR, &replacement).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Media.partOf");

    let r = client.delete(format!("{base}/Media/{}", ids[1])).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, outcome) = get_json(&client, &format!("{base}/Media/{}", ids[1])).await;
    assert_eq!(status, 404, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "not-found");
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.tokens_refused_rate_limited, 0);
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn single_slot_images_create_read_bytes_search_update_and_delete() {
    let (_gw, sim, base, client) = gateway().await;
    for (category, kind) in [("prescription-card", "rx"), ("driver-license", "dl"), ("patient-photo", "ph")] {
        let id = format!("{kind}.195900.1234");
        let (status, _, created) = send_json(
            &client,
            Method::POST,
            &format!("{base}/Media?category={category}"),
            FHIR,
            &image_media(&jpeg(category), json!({})),
        )
        .await;
        assert_eq!(status, 201, "{category}: {created}");
        assert_eq!(created["id"], id);
        assert_eq!(extension(&created, "appointment-category").unwrap()["valueCode"], category);
        let (status, _, bytes) = get_bytes(&client, &format!("{base}/Media/{id}/$content")).await;
        assert_eq!(status, 200);
        assert_eq!(bytes, jpeg(category), "{category}: exact bytes");

        // One slot per patient: the search page holds it (paging cannot go beyond one entry).
        let (count, found) = pages(&client, &format!("{base}/Media?patient=1234&category={category}&_count=1")).await;
        assert_eq!((count, found), (1, vec![id.clone()]));

        let mut replacement = created.clone();
        replacement["content"]["data"] = json!(BASE64.encode(jpeg("new")));
        let (status, _, updated) =
            send_json(&client, Method::PUT, &format!("{base}/Media/{id}"), FHIR, &replacement).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(get_bytes(&client, &format!("{base}/Media/{id}/$content")).await.2, jpeg("new"));

        let r = client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "{category}");
        assert_eq!(get_json(&client, &format!("{base}/Media/{id}")).await.0, 404);
        let (_, bundle) = get_json(&client, &format!("{base}/Media?patient=1234&category={category}")).await;
        assert!(bundle.get("entry").is_none(), "{bundle}");
    }
    assert_eq!(sim.stats().tokens_refused_rate_limited, 0);
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn documents_of_every_class_create_read_page_update_and_soft_delete() {
    let (_gw, sim, base, client) = gateway().await;
    for (category, kind, subclass) in [
        ("admin", "ad", Some("ADMIN_CONSENT")),
        ("clinicaldocument", "cd", None),
        ("imagingresult", "ir", None),
        ("medicalrecord", "mr", Some("MEDICALRECORD_HISTORICAL")),
    ] {
        let mut created_ids = Vec::new();
        for n in 0..2 {
            let body = pdf(&format!("{category}-{n}"));
            let mut media = document_media(&body, subclass);
            if category == "imagingresult" {
                media["extension"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"url": format!("{XC}external-accession-id"), "valueString": "ACC-77"}));
            }
            let (status, _, created) =
                send_json(&client, Method::POST, &format!("{base}/Media?category={category}"), FHIR, &media).await;
            assert_eq!(status, 201, "{category}: {created}");
            let id = created["id"].as_str().unwrap().to_string();
            assert!(id.starts_with(&format!("{kind}.195900.1234.")), "{id}");
            // Document reads carry athena's fields as extensions.
            let (status, read) = get_json(&client, &format!("{base}/Media/{id}")).await;
            assert_eq!(status, 200);
            assert_eq!(read["status"], "in-progress");
            assert_eq!(extension(&read, "priority").unwrap()["valueInteger"], 2);
            assert_eq!(extension(&read, "internal-note").unwrap()["valueString"], "filed by the gateway test");
            assert_eq!(extension(&read, "document-class").unwrap()["valueString"], category.to_uppercase());
            assert_eq!(extension(&read, "department-id").unwrap()["valueString"], "1");
            assert_eq!(extension(&read, "provider-id").unwrap()["valueString"], "71");
            assert_eq!(extension(&read, "document-source").unwrap()["valueString"], "UPLOAD");
            assert!(extension(&read, "last-modified-date-time").is_some());
            // athena gives the file's size only in lists (`showmetadata`): a read has none to show.
            assert!(extension(&read, "file-size").is_none(), "{read}");
            if category == "imagingresult" {
                assert_eq!(extension(&read, "external-accession-id").unwrap()["valueString"], "ACC-77");
            }
            assert_eq!(read["contained"][0]["resourceType"], "Media");
            let original = extension(&read, "original-document").unwrap()["valueUrl"].as_str().unwrap();
            let (status, content_type, bytes) = get_bytes(&client, original).await;
            assert_eq!((status, content_type.as_str()), (200, "application/pdf"));
            assert_eq!(bytes, body, "{category}: the original document comes back exactly");
            let (status, _, page) = get_bytes(&client, read["content"]["url"].as_str().unwrap()).await;
            assert_eq!((status, page), (200, body.clone()), "{category}: first page");
            created_ids.push(id);
        }
        let search = format!("{base}/Media?patient=1234&category={category}&_count=1");
        let (_, listed) = get_json(&client, &format!("{base}/Media?patient=1234&category={category}&_count=100")).await;
        let listed =
            listed["entry"].as_array().unwrap().iter().find(|e| e["resource"]["id"] == created_ids[0].as_str());
        let size = extension(&listed.unwrap()["resource"], "file-size").map(|e| e["valueInteger"].clone());
        assert_eq!(size, Some(json!(pdf(&format!("{category}-0")).len())), "{category}: the file's size in searches");
        let (count, found) = pages(&client, &search).await;
        assert!(count >= 3, "{category}: {count} pages");
        assert!(created_ids.iter().all(|id| found.contains(id)), "{category}: {found:?}");
        // `created` ranges become athena's startdate/enddate: only this test's documents are from today.
        let today = &read_created(&client, &base, &created_ids[0]).await;
        let (_, recent) = pages(&client, &format!("{search}&created=ge{today}&created=le{today}")).await;
        assert_eq!(recent, created_ids, "{category}");

        // Metadata update.
        let id = &created_ids[0];
        let (_, mut current) = get_json(&client, &format!("{base}/Media/{id}")).await;
        for e in current["extension"].as_array_mut().unwrap() {
            if e["url"] == format!("{XC}priority") {
                e["valueInteger"] = json!(1);
            }
        }
        let (status, _, updated) = send_json(&client, Method::PUT, &format!("{base}/Media/{id}"), FHIR, &current).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(extension(&updated, "priority").unwrap()["valueInteger"], 1);
        assert_eq!(
            extension(&updated, "internal-note").unwrap()["valueString"],
            "filed by the gateway test",
            "an unchanged note is not sent again (athena would append it)"
        );
        // The same through PATCH.
        let patch = json!([{"op": "replace", "path": "/operator/reference", "value": "Practitioner/72"}]);
        let (status, _, patched) =
            send_json(&client, Method::PATCH, &format!("{base}/Media/{id}"), "application/json-patch+json", &patch)
                .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["operator"]["reference"], "Practitioner/72");
        // The file is not something athena can change.
        current["content"]["data"] = json!(BASE64.encode(pdf("other")));
        let (status, _, outcome) = send_json(&client, Method::PUT, &format!("{base}/Media/{id}"), FHIR, &current).await;
        assert_eq!(status, 422, "{outcome}");
        assert_eq!(outcome["issue"][0]["code"], "business-rule");
        assert_eq!(outcome["issue"][0]["expression"][0], "Media.content.data");
        assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("cannot replace a document's file"));

        // Soft delete: reads show entered-in-error, searches leave it out unless asked for.
        let r = client.delete(format!("{base}/Media/{id}")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let (status, deleted) = get_json(&client, &format!("{base}/Media/{id}")).await;
        assert_eq!((status, deleted["status"].as_str()), (200, Some("entered-in-error")));
        assert!(extension(&deleted, "deleted-date-time").is_some());
        let (_, remaining) = pages(&client, &search).await;
        assert!(!remaining.contains(id), "{category}: deleted documents are not listed");
        let (_, deleted_only) = pages(&client, &format!("{search}&status=entered-in-error")).await;
        assert!(deleted_only.contains(id), "{category}: {deleted_only:?}");
    }
    let stats = sim.stats();
    assert_eq!(stats.creates, 8, "every document create reached athena exactly once");
    assert_eq!(stats.token_requests, 1);
    assert_eq!(stats.tokens_refused_rate_limited, 0);
    assert_only_listed_parameters(&sim);
}

async fn read_created(client: &reqwest::Client, base: &str, id: &str) -> String {
    let (_, media) = get_json(client, &format!("{base}/Media/{id}")).await;
    media["createdDateTime"].as_str().unwrap()[..10].to_string()
}

#[tokio::test]
async fn bad_input_gets_a_clear_operation_outcome_naming_the_field() {
    let (_gw, sim, base, client) = gateway().await;
    let other = format!("Patient/{UNASSIGNED_PATIENT_ID}");
    let cases: Vec<(&str, Method, String, Value, u16, &str, &str)> = vec![
        (
            "a card without a resolvable insurance",
            Method::POST,
            format!("{base}/Media?category=insurance-card"),
            image_media(&jpeg("x"), json!({"subject": {"reference": other}})),
            400,
            "required",
            "Media.partOf",
        ),
        (
            "a card for an insurance the patient does not have",
            Method::POST,
            format!("{base}/Media?category=insurance-card"),
            image_media(&jpeg("x"), json!({"partOf": [{"reference": "Coverage/9999"}]})),
            422,
            "business-rule",
            "",
        ),
        (
            "a PDF as an insurance card",
            Method::POST,
            format!("{base}/Media?category=insurance-card"),
            {
                let mut m = image_media(&pdf("card"), json!({}));
                m["content"]["contentType"] = json!("application/pdf");
                m
            },
            422,
            "not-supported",
            "Media.content.contentType",
        ),
        (
            "an unknown category",
            Method::POST,
            format!("{base}/Media?category=x-rays"),
            image_media(&jpeg("x"), json!({})),
            400,
            "invalid",
            "category",
        ),
        (
            "an admin document without a subclass (athena's missingfields)",
            Method::POST,
            format!("{base}/Media?category=admin"),
            document_media(&pdf("x"), None),
            400,
            "required",
            "Media.modality.coding.where(system='https://docs.athenahealth.com/api/documentsubclass').code",
        ),
        (
            "a clinical provider on an admin document (athena's admin create has no such field)",
            Method::POST,
            format!("{base}/Media?category=admin"),
            {
                let mut m = document_media(&pdf("x"), Some("ADMIN_CONSENT"));
                m["extension"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"url": format!("{XC}clinical-provider-id"), "valueString": "72"}));
                m
            },
            422,
            "business-rule",
            "Media.extension",
        ),
        (
            "a medical record filed as completed (athena's medical-record create has no autoclose)",
            Method::POST,
            format!("{base}/Media?category=medicalrecord"),
            {
                let mut m = document_media(&pdf("x"), Some("MEDICALRECORD_HISTORICAL"));
                m["status"] = json!("completed");
                m
            },
            422,
            "business-rule",
            "Media.status",
        ),
        (
            "a JPEG as a document",
            Method::POST,
            format!("{base}/Media?category=admin"),
            {
                let mut m = document_media(&jpeg("x"), Some("ADMIN_CONSENT"));
                m["content"]["contentType"] = json!("image/jpeg");
                m
            },
            422,
            "not-supported",
            "Media.content.contentType",
        ),
        (
            "a document for a patient without a department",
            Method::POST,
            format!("{base}/Media?category=admin"),
            {
                let mut m = document_media(&pdf("x"), Some("ADMIN_CONSENT"));
                m["subject"]["reference"] = json!(other);
                m
            },
            400,
            "required",
            "Media.extension('http://xcaliber-fhir/structureDefinition/department-id')",
        ),
    ];
    for (what, method, url, body, status, code, expression) in cases {
        let (got, headers, outcome) = send_json(&client, method, &url, FHIR, &body).await;
        assert_eq!(got, status, "{what}: {outcome}");
        assert_eq!(headers["content-type"], "application/fhir+json", "{what}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
        assert_eq!(outcome["issue"][0]["code"], code, "{what}: {outcome}");
        if !expression.is_empty() {
            assert_eq!(outcome["issue"][0]["expression"][0], expression, "{what}: {outcome}");
        }
        assert!(!outcome["issue"][0]["diagnostics"].as_str().unwrap_or("").is_empty(), "{what}");
    }
    let searches = [
        (format!("{base}/Media?patient={UNASSIGNED_PATIENT_ID}&category=admin"), 400, "required", "departmentId"),
        (format!("{base}/Media?patient=1234&category=admin&departmentId=2"), 422, "business-rule", ""),
        (format!("{base}/Media?patient=1234&category=admin&departmentId=abc"), 400, "invalid", "departmentId"),
        (format!("{base}/Media?category=admin"), 400, "required", "patient"),
        (format!("{base}/Media?patient=1234&category=admin&created=yesterday"), 400, "invalid", ""),
        (format!("{base}/Media?patient=1234&category=admin&status=stopped"), 400, "invalid", "status"),
        (format!("{base}/Media?patient=1234&category=nope"), 400, "invalid", "category"),
        (format!("{base}/Media/ad.195900.1234.44987/$content?page=../../x"), 400, "invalid", "page"),
        (format!("{base}/Media/ad.195900.1234.44987/$content"), 400, "invalid", ""),
        (format!("{base}/Media/ad.999999.1234.44987"), 404, "not-found", ""),
    ];
    for (url, status, code, expression) in searches {
        let (got, outcome) = get_json(&client, &url).await;
        assert_eq!(got, status, "{url}: {outcome}");
        assert_eq!(outcome["issue"][0]["code"], code, "{url}: {outcome}");
        if !expression.is_empty() {
            assert_eq!(outcome["issue"][0]["expression"][0], expression, "{url}: {outcome}");
        }
    }
    assert_eq!(sim.stats().creates, 0, "no bad input filed a document");
    assert_eq!(sim.stats().tokens_refused_rate_limited, 0);
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn two_hundred_cold_requests_make_one_token_request() {
    // Gateway A runs the simulator; gateway B (cold) reaches it as a real athena connection.
    let a = start_with(&athena_config("")).await;
    let sim = a.athena_sim("demo-athena").unwrap().clone();
    let config = real_connection(&sim, &sim.base_url());
    let b = start_with(&config).await;
    let base = athena_base(&b);
    let client = http();
    sim.reset_stats();
    let reads = (0..200).map(|i| {
        let client = client.clone();
        let url = if i % 2 == 0 {
            format!("{base}/Media/ic.195900.1234.5678")
        } else {
            format!("{base}/Media/ad.195900.1234.44987")
        };
        async move { get_json(&client, &url).await.0 }
    });
    let statuses = futures_util::future::join_all(reads).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let stats = sim.stats();
    assert_eq!(stats.token_requests, 1, "200 cold requests share one token");
    assert_eq!(stats.tokens_refused_rate_limited, 0);
    // An expired token is refreshed once and the read succeeds.
    sim.expire_all_tokens();
    assert_eq!(get_json(&client, &format!("{base}/Media/ph.195900.1234")).await.0, 200);
    assert_eq!(sim.stats().token_requests, 2);
}

#[tokio::test]
async fn throttling_403s_are_retried_for_reads_and_reported_as_429_when_they_persist() {
    use ehr_gateway::sim::athena::{Fault, FaultAction};
    let (_gw, sim, base, client) = gateway().await;
    let url = format!("{base}/Media/ph.195900.1234");
    assert_eq!(get_json(&client, &url).await.0, 200);
    // One "Developer Over Qps" 403: the read is sent again and succeeds.
    sim.reset_stats();
    sim.inject(Fault::new(FaultAction::Status(403)).with_path_prefix("/v1/"));
    let (status, media) = get_json(&client, &url).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(sim.stats().requests, 2, "the throttled read was retried once");
    // Throttled on every attempt: 429 throttled, after max_attempts (3) sends.
    sim.reset_stats();
    sim.inject(Fault::new(FaultAction::Status(403)).with_path_prefix("/v1/").repeat(10));
    let r = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(outcome["issue"][0]["code"], "throttled");
    assert_eq!(sim.stats().requests, 3);
    sim.clear_faults();
}

#[tokio::test]
async fn admin_and_medical_record_documents_without_a_subclass_are_refused_before_athena() {
    let (_gw, sim, base, client) = gateway().await;
    sim.reset_stats();
    for category in ["admin", "medicalrecord"] {
        let (status, _, outcome) = send_json(
            &client,
            Method::POST,
            &format!("{base}/Media?category={category}"),
            FHIR,
            &document_media(&pdf("x"), None),
        )
        .await;
        assert_eq!(status, 400, "{category}: {outcome}");
        assert_eq!(outcome["issue"][0]["code"], "required", "{category}: {outcome}");
        assert_eq!(
            outcome["issue"][0]["expression"][0],
            "Media.modality.coding.where(system='https://docs.athenahealth.com/api/documentsubclass').code",
            "{category}"
        );
    }
    assert_eq!(sim.stats().requests, 0, "athena was not asked");
}

#[tokio::test]
async fn internal_notes_are_appended_where_athena_appends_and_replaced_where_it_replaces() {
    let (_gw, sim, base, client) = gateway().await;
    let admin = DEMO_ADMIN_DOCUMENT_IDS[1];
    let url = format!("{base}/Media/ad.195900.1234.{admin}");
    let seeded = format!("Seeded document {admin}");
    let (_, current) = get_json(&client, &url).await;
    let at = format!("/extension/{}/valueString", extension_index(&current, "internal-note"));

    // An admin document's note can only grow: a replace is refused, naming the note, and athena is not asked.
    let (status, outcome) =
        patch(&client, &url, json!([{"op": "replace", "path": at, "value": "patched REPLACED"}])).await;
    assert_eq!(status, 422, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "business-rule");
    assert_eq!(outcome["issue"][0]["expression"][0], format!("Media.extension('{XC}internal-note')"));
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("append"), "{outcome}");
    assert_eq!(sim.internal_note(admin), Some(seeded.clone()));

    // The current note followed by more text is an append.
    let (status, patched) =
        patch(&client, &url, json!([{"op": "replace", "path": at, "value": format!("{seeded}\nchecked by phone")}]))
            .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(sim.internal_note(admin), Some(format!("{seeded} checked by phone")));
    assert_eq!(extension(&patched, "internal-note").unwrap()["valueString"], format!("{seeded} checked by phone"));

    // Clinical documents replace theirs (athena's replaceinternalnote).
    let clinical = DEMO_CLINICAL_DOCUMENT_IDS[0];
    let url = format!("{base}/Media/cd.195900.1234.{clinical}");
    let (_, current) = get_json(&client, &url).await;
    let at = format!("/extension/{}/valueString", extension_index(&current, "internal-note"));
    let (status, patched) = patch(&client, &url, json!([{"op": "replace", "path": at, "value": "rewritten"}])).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(extension(&patched, "internal-note").unwrap()["valueString"], "rewritten");
    assert_eq!(sim.internal_note(clinical).as_deref(), Some("rewritten"));
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn changing_what_athena_cannot_update_is_a_422_naming_the_element() {
    let (_gw, sim, base, client) = gateway().await;
    let url = format!("{base}/Media/ad.195900.1234.{}", DEMO_ADMIN_DOCUMENT_IDS[3]);
    let (_, current) = get_json(&client, &url).await;
    let cases = [
        (
            json!([{"op": "replace", "path": format!("/extension/{}/valueString", extension_index(&current, "document-source")), "value": "FAX"}]),
            format!("Media.extension('{XC}document-source')"),
        ),
        (json!([{"op": "add", "path": "/note", "value": [{"text": "seen"}]}]), "Media.note".to_string()),
        (
            json!([{"op": "add", "path": "/extension/-", "value": {"url": format!("{XC}clinical-provider-id"), "valueString": "72"}}]),
            format!("Media.extension('{XC}clinical-provider-id')"),
        ),
    ];
    for (operations, expression) in cases {
        let (status, outcome) = patch(&client, &url, operations).await;
        assert_eq!(status, 422, "{expression}: {outcome}");
        assert_eq!(outcome["issue"][0]["code"], "business-rule", "{outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], expression.as_str(), "{outcome}");
    }
    assert_eq!(get_json(&client, &url).await.1, current, "nothing changed");
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn a_plain_text_404_from_athenas_api_gateway_is_a_502() {
    let a = start_with(&athena_config("")).await;
    let sim = a.athena_sim("demo-athena").unwrap().clone();
    // A base URL athena's API gateway does not route answers its plain-text 404, not athenaNet's JSON.
    let b = start_with(&real_connection(&sim, &format!("{}/v2/195900", sim.host_url()))).await;
    let (status, outcome) = get_json(&http(), &format!("{}/Media/ad.195900.1234.44987", athena_base(&b))).await;
    assert_eq!(status, 502, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "exception", "{outcome}");
}

#[tokio::test]
async fn an_unknown_insurance_card_is_not_found() {
    let (_gw, _sim, base, client) = gateway().await;
    for method in [Method::GET, Method::DELETE] {
        let r = client.request(method.clone(), format!("{base}/Media/ic.195900.1234.1111")).bearer_auth(TOKEN).send();
        let r = r.await.unwrap();
        let status = r.status().as_u16();
        let outcome: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(status, 404, "{method}: {outcome}");
        assert_eq!(outcome["issue"][0]["code"], "not-found", "{method}: {outcome}");
    }
}

#[tokio::test]
async fn card_search_pages_hold_count_entries_and_a_next_link_only_when_more_exist() {
    let (_gw, sim, base, client) = gateway().await;
    // Cards on the first and third insurance; the second has none.
    let media = image_media(&jpeg("third"), json!({"partOf": [{"reference": "Coverage/5680"}]}));
    let (status, _, created) =
        send_json(&client, Method::POST, &format!("{base}/Media?category=insurance-card"), FHIR, &media).await;
    assert_eq!(status, 201, "{created}");
    let search = format!("{base}/Media?patient=1234&category=insurance-card");
    let (first, third) = ("ic.195900.1234.5678".to_string(), "ic.195900.1234.5680".to_string());
    assert_eq!(walk(&client, &format!("{search}&_count=1")).await, vec![vec![first.clone()], vec![third.clone()]]);
    assert_eq!(walk(&client, &format!("{search}&_count=2")).await, vec![vec![first.clone(), third.clone()]]);
    assert_eq!(walk(&client, &format!("{search}&_count=3")).await, vec![vec![first, third]]);
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn the_same_document_update_sent_twice_appends_the_note_once() {
    let (_gw, sim, base, client) = gateway().await;
    let id = DEMO_ADMIN_DOCUMENT_IDS[4];
    let url = format!("{base}/Media/ad.195900.1234.{id}");
    let (_, mut media) = get_json(&client, &url).await;
    let at = extension_index(&media, "internal-note");
    media["extension"][at]["valueString"] = json!(format!("Seeded document {id}\nsent twice"));
    for _ in 0..2 {
        let (status, _, updated) = send_json(&client, Method::PUT, &url, FHIR, &media).await;
        assert_eq!(status, 200, "{updated}");
    }
    assert_eq!(sim.internal_note(id), Some(format!("Seeded document {id} sent twice")));
    assert_only_listed_parameters(&sim);
}

#[tokio::test]
async fn under_faults_each_acknowledged_note_update_lands_exactly_once() {
    // A short upstream timeout, so a late athena answer is a timeout the gateway sees.
    let config = athena_config("").replace("simulator = true", "simulator = true\ntimeout_ms = 400");
    let gw = start_with(&config).await;
    let sim = gw.athena_sim("demo-athena").unwrap().clone();
    let (base, client) = (athena_base(&gw), http());
    let id = DEMO_ADMIN_DOCUMENT_IDS[5];
    let url = format!("{base}/Media/ad.195900.1234.{id}");
    let put = || Fault::new(FaultAction::Status(500)).with_method(reqwest::Method::PUT);
    let late = FaultAction::Latency(std::time::Duration::from_millis(900));
    let faults: Vec<Option<(Fault, bool)>> = vec![
        // (fault, strikes after athena processed the request)
        Some((put(), true)),
        Some((Fault { action: FaultAction::Reset, ..put() }, true)),
        Some((Fault { action: late, ..put() }, true)),
        Some((Fault { action: late, ..put() }, false)),
        Some((Fault { action: FaultAction::Status(503), ..put() }, false)),
        Some((Fault { action: FaultAction::Reset, ..put() }, false)),
        None,
        Some((Fault::new(FaultAction::Status(500)).with_method(reqwest::Method::GET).repeat(2), true)),
    ];
    let mut tags = Vec::new();
    let mut acknowledged_at_once = 0;
    for round in 0..2 {
        for (n, fault) in faults.iter().enumerate() {
            let tag = format!("u{round}{n}");
            match fault {
                Some((fault, true)) => sim.inject_after_processing(fault.clone()),
                Some((fault, false)) => sim.inject(fault.clone()),
                None => {}
            }
            // What a client does with an unknown outcome, as the gateway's answer says: read, and send the
            // update again only if it did not land.
            for attempt in 0..3 {
                let (_, mut media) = get_json(&client, &url).await;
                let at = extension_index(&media, "internal-note");
                let note = media["extension"][at]["valueString"].as_str().unwrap().to_string();
                if note.split_whitespace().any(|word| word == tag) {
                    break;
                }
                media["extension"][at]["valueString"] = json!(format!("{note}\n{tag}"));
                let (status, _, answer) = send_json(&client, Method::PUT, &url, FHIR, &media).await;
                sim.clear_faults();
                if status == 200 {
                    acknowledged_at_once += usize::from(attempt == 0);
                    break;
                }
                assert!([502, 503, 504].contains(&status), "{tag}: {status} {answer}");
                assert!(answer["issue"][0]["diagnostics"].as_str().unwrap().contains("may or may not have happened"));
                // Let a request athena still holds land before reading again.
                tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
            }
            tags.push(tag);
        }
    }
    let note = sim.internal_note(id).unwrap();
    for tag in &tags {
        let count = note.split_whitespace().filter(|word| word == tag).count();
        assert_eq!(count, 1, "{tag} must be in the note exactly once: {note:?}");
    }
    assert_eq!(acknowledged_at_once, 4, "the rounds without a PUT fault are answered at once");
    assert_only_listed_parameters(&sim);
}
