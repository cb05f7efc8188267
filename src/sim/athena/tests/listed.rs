//! The simulator honours exactly what athena.md lists per endpoint: unlisted parameters and fields are ignored (and
//! recorded, so a gateway relying on one fails a test), per-class create and update fields, the internal note that
//! only clinical documents can replace, faults that strike after the request took effect, and demo images a viewer
//! opens.

use super::*;

fn doc_url(sim: &AthenaSimHandle, class: &str, id: u64) -> String {
    format!("{}/{id}", docs_url(sim, class))
}

/// The width and height a baseline or progressive JPEG declares in its start-of-frame segment.
fn jpeg_size(bytes: &[u8]) -> Option<(u16, u16)> {
    if !bytes.starts_with(&[0xff, 0xd8]) || !bytes.ends_with(&[0xff, 0xd9]) {
        return None;
    }
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xff {
            return None;
        }
        let marker = bytes[at + 1];
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if matches!(marker, 0xc0 | 0xc2) {
            let segment = bytes.get(at + 4..at + 2 + length)?;
            return Some((u16::from_be_bytes([segment[3], segment[4]]), u16::from_be_bytes([segment[1], segment[2]])));
        }
        at += 2 + length;
    }
    None
}

/// The width and height of a PNG whose chunks are all present with their lengths (signature, IHDR … IEND).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let rest = bytes.strip_prefix(b"\x89PNG\r\n\x1a\n")?;
    let mut at = 0;
    let mut size = None;
    let mut ended = false;
    while at + 8 <= rest.len() {
        let length = u32::from_be_bytes(rest[at..at + 4].try_into().ok()?) as usize;
        let kind = &rest[at + 4..at + 8];
        let data = rest.get(at + 8..at + 8 + length)?;
        if kind == b"IHDR" {
            size = Some((
                u32::from_be_bytes(data[0..4].try_into().ok()?),
                u32::from_be_bytes(data[4..8].try_into().ok()?),
            ));
        }
        ended |= kind == b"IEND";
        at += 12 + length;
    }
    size.filter(|_| ended && at == rest.len())
}

#[tokio::test]
async fn seeded_images_are_real_images_a_viewer_opens() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let base = sim.base_url();
    for path in ["insurances/5678/image", "photo", "driverslicense"] {
        let r = http.get(format!("{base}/patients/1234/{path}?jpegoutput=true")).bearer_auth(&token).send().await;
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let content_type = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = r.bytes().await.unwrap();
        let (width, height) = match content_type.as_str() {
            "image/jpeg" => jpeg_size(&bytes).map(|(w, h)| (u32::from(w), u32::from(h))),
            "image/png" => png_size(&bytes),
            other => panic!("{path}: {other}"),
        }
        .unwrap_or_else(|| panic!("{path}: not a complete {content_type}"));
        assert!(width >= 16 && height >= 16, "{path}: {width}x{height} is too small to show anything");
        assert!(bytes.len() < 1024, "{path}: demo images stay small ({} bytes)", bytes.len());
    }
    let (_, body) = get(&http, &doc_url(&sim, "admin", DEMO_ADMIN_DOCUMENT_IDS[0]), &token).await;
    let href = body[0]["pages"][0]["href"].as_str().unwrap();
    let page = http.get(href).bearer_auth(&token).send().await.unwrap().bytes().await.unwrap();
    assert!(png_size(&page).is_some_and(|(w, h)| w >= 16 && h >= 16), "a seeded page is a real page image");
}

#[tokio::test]
async fn a_single_document_read_ignores_showmetadata_which_only_lists_take() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let id = DEMO_ADMIN_DOCUMENT_IDS[0];
    let (status, body) = get(&http, &format!("{}?showmetadata=true", doc_url(&sim, "admin", id)), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body[0].get("filesize").is_none() && body[0].get("originalfilename").is_none(), "{body}");
    assert_eq!(
        sim.stats().ignored_parameters,
        vec!["GET /patients/{patientid}/documents/admin/{adminid}: showmetadata".to_owned()]
    );
    // The lists take it.
    let (_, body) = get(&http, &format!("{}?departmentid=1&showmetadata=true", docs_url(&sim, "admin")), &token).await;
    let listed = body["admins"].as_array().unwrap().iter().find(|d| d["adminid"] == id).unwrap();
    assert!(listed["filesize"].as_u64().is_some_and(|size| size > 0), "{listed}");
    assert_eq!(sim.stats().ignored_parameters.len(), 1, "showmetadata is a list parameter");
}

/// Creates a document of `class` with `fields` and the subclass, and reads it back.
async fn create_and_read(
    sim: &AthenaSimHandle,
    http: &reqwest::Client,
    token: &str,
    class: &str,
    subclass: &str,
    fields: &[(&str, &str)],
) -> Value {
    let url = docs_url(sim, class);
    let mut pairs = fields.to_vec();
    pairs.push(("documentsubclass", subclass));
    let (status, body) = send_form(http, Method::POST, &url, token, &pairs).await;
    assert_eq!(status, StatusCode::OK, "{class}: {body}");
    let id = &body[format!("{class}id")];
    let id = id.as_u64().or_else(|| id.as_str().and_then(|s| s.parse().ok())).expect("the new id");
    get(http, &format!("{url}/{id}"), token).await.1[0].clone()
}

#[tokio::test]
async fn creates_take_only_the_fields_athena_lists_for_the_class() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let pdf = BASE64.encode(PDF);
    let common = [
        ("departmentid", "1"),
        ("attachmentcontents", pdf.as_str()),
        ("attachmenttype", "PDF"),
        ("autoclose", "true"),
        ("documentdate", "02/01/2024"),
        ("observationdate", "01/31/2024"),
        ("observationtime", "13:45"),
        ("clinicalproviderid", "72"),
        ("accessionid", "ACC-1"),
        ("internalaccessionidentifier", "IAC-1"),
        ("tietoorderid", "5151"),
        ("actionnote", "call the patient"),
    ];
    // Admin: no observation date, clinical provider or accession ids.
    let admin = create_and_read(&sim, &http, &token, "admin", "ADMIN_CONSENT", &common).await;
    assert_eq!(admin["status"], "CLOSED");
    assert_eq!(admin["documentdate"], "02/01/2024");
    for absent in ["observationdatetime", "clinicalproviderid", "externalaccessionid", "tietoorderid"] {
        assert!(admin.get(absent).is_none(), "admin: {absent} in {admin}");
    }
    // Clinical documents add the clinical provider and the observation date and time.
    let clinical = create_and_read(&sim, &http, &token, "clinicaldocument", "CLINICALDOCUMENT", &common).await;
    assert_eq!(clinical["observationdatetime"], "01/31/2024 13:45:00");
    assert_eq!(clinical["clinicalproviderid"], 72);
    assert!(clinical.get("externalaccessionid").is_none());
    // Imaging results add the accession ids, the order and the observation date.
    let imaging = create_and_read(&sim, &http, &token, "imagingresult", "IMAGINGRESULT", &common).await;
    assert_eq!(imaging["externalaccessionid"], "ACC-1");
    assert_eq!(imaging["internalaccessionid"], "IAC-1");
    assert_eq!(imaging["tietoorderid"], "5151");
    assert_eq!(imaging["observationdatetime"], "01/31/2024 13:45:00");
    assert!(imaging.get("clinicalproviderid").is_none());
    // Medical records take no autoclose (filed for review), attachment type or dates.
    let record = create_and_read(&sim, &http, &token, "medicalrecord", "MEDICALRECORD_HISTORICAL", &common).await;
    assert_eq!(record["status"], "REVIEW");
    assert!(record.get("documentdate").is_none() && record.get("observationdatetime").is_none(), "{record}");

    let ignored = sim.stats().ignored_parameters;
    let of = |class: &str| -> Vec<String> {
        let prefix = format!("POST /patients/{{patientid}}/documents/{class}: ");
        ignored.iter().filter_map(|i| i.strip_prefix(&prefix).map(str::to_owned)).collect()
    };
    assert_eq!(
        of("admin"),
        [
            "accessionid",
            "actionnote",
            "clinicalproviderid",
            "internalaccessionidentifier",
            "observationdate",
            "observationtime",
            "tietoorderid"
        ]
    );
    assert_eq!(of("clinicaldocument"), ["accessionid", "actionnote", "internalaccessionidentifier", "tietoorderid"]);
    assert_eq!(of("imagingresult"), ["actionnote", "clinicalproviderid"]);
    assert_eq!(
        of("medicalrecord"),
        [
            "accessionid",
            "actionnote",
            "attachmenttype",
            "autoclose",
            "clinicalproviderid",
            "documentdate",
            "internalaccessionidentifier",
            "observationdate",
            "observationtime",
            "tietoorderid"
        ]
    );
}

#[tokio::test]
async fn only_clinical_documents_can_replace_their_internal_note() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let clinical = DEMO_CLINICAL_DOCUMENT_IDS[0];
    let admin = DEMO_ADMIN_DOCUMENT_IDS[1];
    let replace = [("internalnote", "rewritten"), ("replaceinternalnote", "true")];

    let (status, _) =
        send_form(&http, Method::PUT, &doc_url(&sim, "clinicaldocument", clinical), &token, &replace).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.internal_note(clinical).as_deref(), Some("rewritten"));

    // Admin documents append, whatever the request says.
    let (status, _) = send_form(&http, Method::PUT, &doc_url(&sim, "admin", admin), &token, &replace).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sim.internal_note(admin), Some(format!("Seeded document {admin} rewritten")));
    assert_eq!(
        sim.stats().ignored_parameters,
        vec!["PUT /patients/{patientid}/documents/admin/{adminid}: replaceinternalnote".to_owned()]
    );

    // An update of fields the class does not take is an update of nothing.
    let (status, body) =
        send_form(&http, Method::PUT, &doc_url(&sim, "admin", admin), &token, &[("clinicalproviderid", "72")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Additional fields are required.");
    let (status, _) = send_form(
        &http,
        Method::PUT,
        &doc_url(&sim, "clinicaldocument", clinical),
        &token,
        &[("clinicalproviderid", "72")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn faults_after_processing_leave_the_write_done_but_unacknowledged() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let id = DEMO_ADMIN_DOCUMENT_IDS[2];
    let url = doc_url(&sim, "admin", id);
    let seeded = format!("Seeded document {id}");

    // A server error after the note was appended.
    sim.inject_after_processing(Fault::new(FaultAction::Status(500)).with_method(Method::PUT));
    let (status, _) = send_form(&http, Method::PUT, &url, &token, &[("internalnote", "n1")]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(sim.internal_note(id), Some(format!("{seeded} n1")));

    // A reset after it took effect.
    sim.inject_after_processing(Fault::new(FaultAction::Reset).with_method(Method::PUT));
    let r = http.put(&url).bearer_auth(&token).header(CONTENT_TYPE, FORM).body("internalnote=n2").send().await;
    assert!(r.is_err());
    assert_eq!(sim.internal_note(id), Some(format!("{seeded} n1 n2")));

    // A late answer: the write is done long before the client hears of it.
    sim.inject_after_processing(Fault::new(FaultAction::Latency(Duration::from_millis(300))).with_method(Method::PUT));
    let r = http
        .put(&url)
        .bearer_auth(&token)
        .header(CONTENT_TYPE, FORM)
        .body("internalnote=n3")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(sim.internal_note(id), Some(format!("{seeded} n1 n2 n3")));

    // Reads are not touched by write faults, and the queue empties.
    assert_eq!(get(&http, &url, &token).await.0, StatusCode::OK);
    sim.inject_after_processing(Fault::new(FaultAction::Status(503)));
    sim.clear_faults();
    assert_eq!(get(&http, &url, &token).await.0, StatusCode::OK);
}
