//! Document tests of the athena simulator: form-only writes, rejected writes, create/read/update/soft delete, and both
//! document lists with their filters and paging.

use super::*;

#[tokio::test]
async fn writes_are_form_encoded_only_and_need_departmentid() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = docs_url(&sim, "admin");

    // A JSON body is not read as fields: the required ones are reported missing.
    let r = http
        .post(&url)
        .bearer_auth(&token)
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"departmentid":"1","documentsubclass":"ADMIN_CONSENT"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Additional fields are required.");
    assert_eq!(body["missingfields"], json!(["departmentid", "documentsubclass"]));
    assert!(body["detailedmessage"].is_string());

    // departmentid is required on creates and lists.
    let (status, body) = send_form(&http, Method::POST, &url, &token, &[("documentsubclass", "ADMIN_CONSENT")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["missingfields"], json!(["departmentid"]));
    let (status, body) = get(&http, &url, &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["missingfields"], json!(["departmentid"]));

    // A department the patient is not registered in, and a malformed one.
    let (status, body) = get(&http, &format!("{url}?departmentid=2"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The specified patient does not exist in that department.");
    let (status, body) = get(&http, &format!("{url}?departmentid=abc"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The data provided is invalid.");

    // The same create as a form works.
    let pairs = [("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT")];
    let (status, body) = send_form(&http, Method::POST, &url, &token, &pairs).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], "true");
    assert_eq!(body["adminid"], FIRST_CREATED_DOCUMENT_ID.to_string());
    // Bad date and attachment type are 400s.
    let (status, body) = send_form(
        &http,
        Method::POST,
        &url,
        &token,
        &[("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT"), ("documentdate", "2024-01-31")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The data provided is invalid.");
    let (status, body) = send_form(
        &http,
        Method::POST,
        &url,
        &token,
        &[("departmentid", "1"), ("documentsubclass", "ADMIN_CONSENT"), ("attachmenttype", "PNG")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Invalid attachment type id.");
}

#[tokio::test]
async fn rejected_writes_answer_200_with_success_false() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let not_pdf = BASE64.encode(JPEG);

    // Admin: success is the string "false".
    let (status, body) = send_form(
        &http,
        Method::POST,
        &docs_url(&sim, "admin"),
        &token,
        &[("departmentid", "1"), ("documentsubclass", "ADMIN_INSURANCECARD"), ("attachmentcontents", &not_pdf)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], "false");
    assert!(body["errormessage"].as_str().unwrap().contains("PDF"));

    // Clinical document: success is a boolean.
    let (status, body) = send_form(
        &http,
        Method::POST,
        &docs_url(&sim, "clinicaldocument"),
        &token,
        &[("departmentid", "1"), ("documentsubclass", "CLINICALDOCUMENT"), ("attachmentcontents", &not_pdf)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], false);
    assert_eq!(sim.stats().creates, 0);

    // Deleting an already deleted document.
    let url = format!("{}/{DEMO_DELETED_ADMIN_DOCUMENT_ID}", docs_url(&sim, "admin"));
    let (status, body) = json_of(http.delete(&url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], "false");
    assert!(body["errormessage"].is_string());
}

#[tokio::test]
async fn document_create_read_update_soft_delete() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = docs_url(&sim, "clinicaldocument");
    let pdf = BASE64.encode(PDF);

    let (status, body) = send_form(
        &http,
        Method::POST,
        &url,
        &token,
        &[
            ("departmentid", "1"),
            ("documentsubclass", "CLINICALDOCUMENT_CONSULTNOTE"),
            ("attachmentcontents", &pdf),
            ("attachmenttype", "PDF"),
            ("internalnote", "first"),
            ("observationdate", "01/31/2024"),
            ("observationtime", "13:45"),
            ("originalfilename", "consult"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    let id = body["clinicaldocumentid"].as_u64().expect("numeric id");
    assert_eq!(sim.stats().creates, 1);
    let doc_url = format!("{url}/{id}");

    let (status, body) = get(&http, &doc_url, &token).await;
    assert_eq!(status, StatusCode::OK);
    let doc = &body[0];
    assert_eq!(doc["clinicaldocumentid"], id);
    assert_eq!(doc["documentid"], id.to_string());
    assert_eq!(doc["departmentid"], "1");
    assert_eq!(doc["status"], "REVIEW");
    assert_eq!(doc["priority"], 2);
    assert_eq!(doc["internalnote"], "first");
    // The file's metadata comes with lists (`showmetadata` is a list parameter).
    let (_, list) = get(&http, &format!("{url}?departmentid=1&showmetadata=true"), &token).await;
    let listed = list["clinicaldocuments"].as_array().unwrap().iter().find(|d| d["clinicaldocumentid"] == id).unwrap();
    assert_eq!(listed["filetype"], "PDF");
    assert_eq!(listed["filesize"], PDF.len());
    assert_eq!(listed["originalfilename"], "consult");
    assert!(doc["createddate"].as_str().unwrap().len() == 10);
    assert!(doc["createddatetime"].as_str().unwrap().ends_with("-05:00"));
    let page = &doc["pages"][0];
    assert_eq!(page["pageordering"], 1);
    assert_eq!(page["contenttype"], "application/pdf");
    let href = page["href"].as_str().unwrap();
    assert!(href.starts_with(&sim.base_url()));
    let r = http.get(href).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), PDF);
    let r = http.get(format!("{doc_url}/originaldocument")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), PDF);

    // Metadata update: the note is appended; the file cannot be replaced.
    let (status, body) =
        send_form(&http, Method::PUT, &doc_url, &token, &[("internalnote", "second"), ("priority", "1")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    let (_, body) = get(&http, &doc_url, &token).await;
    assert_eq!(body[0]["internalnote"], "first second");
    assert_eq!(body[0]["priority"], 1);
    let (status, _) = send_form(&http, Method::PUT, &doc_url, &token, &[("attachmentcontents", &pdf)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send_form(&http, Method::PUT, &doc_url, &token, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Soft delete: still readable by id, hidden from lists unless showdeleted=true.
    let (status, body) = json_of(http.delete(&doc_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    let (status, body) = get(&http, &doc_url, &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["status"], "DELETED");
    assert!(body[0]["deleteddatetime"].is_string());
    let ids = |body: &Value| -> Vec<u64> {
        body["clinicaldocuments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["clinicaldocumentid"].as_u64().unwrap())
            .collect()
    };
    let (_, body) = get(&http, &format!("{url}?departmentid=1"), &token).await;
    assert_eq!(ids(&body), DEMO_CLINICAL_DOCUMENT_IDS.to_vec());
    let (_, body) = get(&http, &format!("{url}?departmentid=1&showdeleted=true"), &token).await;
    assert!(ids(&body).contains(&id));
    // Updating a deleted document is a rejected write.
    let (status, body) = send_form(&http, Method::PUT, &doc_url, &token, &[("priority", "2")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], false);

    // Unknown ids, and ids of another class.
    let (status, _) = get(&http, &format!("{url}/999"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&http, &format!("{}/{}", docs_url(&sim, "admin"), id), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn document_lists_page_through_relative_next_links() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let mut url = format!("{}?departmentid=1&limit=3", docs_url(&sim, "admin"));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, body) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        assert_eq!(body["totalcount"], 7);
        let items = body["admins"].as_array().unwrap();
        assert!(items.len() <= 3);
        for item in items {
            assert_eq!(item["priority"], "2");
            assert!(item["adminid"].is_u64());
            assert!(item["documentid"].is_string());
            seen.push(item["adminid"].as_u64().unwrap());
        }
        if pages > 1 {
            assert!(body["previous"].is_string());
        }
        match body["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with("/v1/195900/patients/1234/documents/admin?"), "{next}");
                assert!(next.contains("DEPARTMENTID=1") && next.contains("LIMIT=3"), "{next}");
                url = format!("{}{next}", sim.host_url());
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, DEMO_ADMIN_DOCUMENT_IDS.to_vec());

    let (_, body) = get(&http, &format!("{}?departmentid=1&showdeleted=true", docs_url(&sim, "admin")), &token).await;
    assert_eq!(body["totalcount"], 8);
    assert!(body.get("next").is_none());
    let (_, body) =
        get(&http, &format!("{}?departmentid=1&documentsubclass=ADMIN_INSURANCECARD", docs_url(&sim, "admin")), &token)
            .await;
    assert_eq!(body["totalcount"], 2);
    let (status, _) = get(&http, &format!("{}?departmentid=1&limit=x", docs_url(&sim, "admin")), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn generic_docs_url(sim: &AthenaSimHandle) -> String {
    format!("{}/patients/{DEMO_PATIENT_ID}/documents", sim.base_url())
}

/// `documentid`s of a generic list body, checking each item carries the string id and the integer class id.
fn generic_ids(body: &Value) -> Vec<u64> {
    body["documents"]
        .as_array()
        .expect("documents array")
        .iter()
        .map(|doc| {
            let id: u64 = doc["documentid"].as_str().expect("documentid is a string").parse().unwrap();
            let class = DocClass::from_documentclass(doc["documentclass"].as_str().unwrap()).unwrap();
            assert_eq!(doc[class.id_field()].as_u64(), Some(id), "{doc}");
            id
        })
        .collect()
}

/// `MM/DD/YYYY` as a chronologically ordered tuple.
fn ymd(date: &str) -> (u32, u32, u32) {
    let parts: Vec<u32> = date.split('/').map(|p| p.parse().unwrap()).collect();
    (parts[2], parts[0], parts[1])
}

#[tokio::test]
async fn generic_document_list_filters_by_documentclass() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = generic_docs_url(&sim);

    let (status, body) =
        get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN,CLINICALDOCUMENT"), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("admins").is_none());
    let items = body["documents"].as_array().unwrap();
    assert!(items.iter().all(|d| matches!(d["documentclass"].as_str(), Some("ADMIN" | "CLINICALDOCUMENT"))));
    let mut expected = DEMO_ADMIN_DOCUMENT_IDS.to_vec();
    expected.extend(DEMO_CLINICAL_DOCUMENT_IDS);
    // Same order as the class-specific lists: document id ascending.
    assert_eq!(generic_ids(&body), expected);
    assert_eq!(body["totalcount"], expected.len());
    assert!(items.iter().filter(|d| d["documentclass"] == "ADMIN").all(|d| d["priority"] == "2"));
    assert!(items.iter().filter(|d| d["documentclass"] == "CLINICALDOCUMENT").all(|d| d["priority"] == 2));

    // Class names are case-insensitive; without documentclass every class is listed.
    let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=imagingresult"), &token).await;
    assert_eq!(generic_ids(&body), DEMO_IMAGING_RESULT_IDS.to_vec());
    let (_, body) = get(&http, &format!("{url}?departmentid=1&showmetadata=true"), &token).await;
    let all = generic_ids(&body);
    assert_eq!(all.len(), 14);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    for id in [DEMO_MEDICAL_RECORD_ID, DEMO_ENCOUNTER_DOCUMENT_ID, DEMO_LAB_RESULT_ID] {
        assert!(all.contains(&id), "{id}");
    }
    assert_eq!(body["documents"][0]["filetype"], "PDF");
    // The shared filters work here too.
    let (_, body) = get(&http, &format!("{url}?departmentid=1&encounterid=35"), &token).await;
    assert_eq!(generic_ids(&body), vec![DEMO_ENCOUNTER_DOCUMENT_ID]);
    let (_, body) =
        get(&http, &format!("{url}?departmentid=1&documentsubclass=admin_insurancecard,LABRESULT"), &token).await;
    assert_eq!(generic_ids(&body), vec![44987, 44991, DEMO_LAB_RESULT_ID]);

    let (status, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN,BOGUS"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The data provided is invalid.");
    assert!(body["detailedmessage"].as_str().unwrap().starts_with("Invalid documentclass 'BOGUS'"), "{body}");

    // The generic create is not simulated.
    let (status, _) = send_form(&http, Method::POST, &url, &token, &[("departmentid", "1")]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn generic_document_list_filters_created_date_inclusively() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = generic_docs_url(&sim);
    let (_, body) = get(&http, &format!("{url}?departmentid=1"), &token).await;
    let created: Vec<(u64, String)> = body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["documentid"].as_str().unwrap().parse().unwrap(), d["createddate"].as_str().unwrap().to_owned()))
        .collect();
    let mut dates: Vec<&str> = created.iter().map(|(_, date)| date.as_str()).collect();
    dates.sort_by_key(|date| ymd(date));
    dates.dedup();
    assert!(dates.len() >= 5, "{dates:?}");
    let within = |from: Option<&str>, to: Option<&str>| -> Vec<u64> {
        created
            .iter()
            .filter(|(_, date)| from.is_none_or(|f| ymd(date) >= ymd(f)) && to.is_none_or(|t| ymd(date) <= ymd(t)))
            .map(|(id, _)| *id)
            .collect()
    };

    let (start, end) = (dates[1], dates[3]);
    let (status, body) = get(&http, &format!("{url}?departmentid=1&startdate={start}&enddate={end}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let expected = within(Some(start), Some(end));
    assert_eq!(expected.len(), 3, "both bounds are inclusive");
    assert_eq!(generic_ids(&body), expected);
    assert_eq!(body["totalcount"], expected.len());
    for doc in body["documents"].as_array().unwrap() {
        let date = ymd(doc["createddate"].as_str().unwrap());
        assert!(date >= ymd(start) && date <= ymd(end));
    }

    // One bound at a time, and a single day.
    let (_, body) = get(&http, &format!("{url}?departmentid=1&startdate={end}"), &token).await;
    assert_eq!(generic_ids(&body), within(Some(end), None));
    let (_, body) = get(&http, &format!("{url}?departmentid=1&enddate={start}"), &token).await;
    assert_eq!(generic_ids(&body), within(None, Some(start)));
    let (_, body) = get(&http, &format!("{url}?departmentid=1&startdate={start}&enddate={start}"), &token).await;
    assert_eq!(generic_ids(&body), within(Some(start), Some(start)));
    assert_eq!(body["totalcount"], 1);

    // Dates must be MM/DD/YYYY.
    for bad in ["startdate=2023-11-14", "enddate=14/11/2023", "startdate=11/14/23"] {
        let (status, body) = get(&http, &format!("{url}?departmentid=1&{bad}"), &token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"], "The data provided is invalid.");
        let value = bad.split_once('=').unwrap().1;
        assert_eq!(body["detailedmessage"], format!("Expecting format date, but value is '{value}'."));
    }
}

#[tokio::test]
async fn generic_document_list_needs_a_valid_departmentid() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = generic_docs_url(&sim);

    let (status, body) = get(&http, &url, &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Additional fields are required.");
    assert_eq!(body["missingfields"], json!(["departmentid"]));
    let (status, body) = get(&http, &format!("{url}?documentclass=ADMIN&departmentid="), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["missingfields"], json!(["departmentid"]));
    let (status, body) = get(&http, &format!("{url}?departmentid=2"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The specified patient does not exist in that department.");
    let (status, body) = get(&http, &format!("{url}?departmentid=77"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "Invalid departmentid.");
    let (status, body) = get(&http, &format!("{url}?departmentid=abc"), &token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "The data provided is invalid.");
    let (status, _) = get(&http, &format!("{}/patients/4321/documents?departmentid=1", sim.base_url()), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn generic_document_list_pages_through_relative_next_links() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let (_, body) = get(&http, &format!("{}?departmentid=1", generic_docs_url(&sim)), &token).await;
    let all = generic_ids(&body);
    assert!(body.get("next").is_none());

    let mut url = format!("{}?departmentid=1&limit=2", generic_docs_url(&sim));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, body) = get(&http, &url, &token).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        assert_eq!(body["totalcount"], all.len());
        let ids = generic_ids(&body);
        assert!(!ids.is_empty() && ids.len() <= 2);
        seen.extend(ids);
        assert_eq!(body.get("previous").is_some(), pages > 1);
        match body["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with("/v1/195900/patients/1234/documents?"), "{next}");
                assert!(next.contains("DEPARTMENTID=1") && next.contains("LIMIT=2"), "{next}");
                url = format!("{}{next}", sim.host_url());
            }
            None => break,
        }
        assert!(pages < 100, "next links never end");
    }
    assert_eq!(pages, all.len().div_ceil(2));
    assert_eq!(seen, all);

    // limit is capped at 10000; offset past the end is an empty page.
    let (status, body) = get(&http, &format!("{}?departmentid=1&limit=20000", generic_docs_url(&sim)), &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(generic_ids(&body), all);
    let (_, body) = get(&http, &format!("{}?departmentid=1&offset=100", generic_docs_url(&sim)), &token).await;
    assert!(generic_ids(&body).is_empty());
    assert_eq!(body["totalcount"], all.len());
}

#[tokio::test]
async fn generic_document_list_shows_deleted_only_on_request() {
    let (sim, http) = start().await;
    let token = token(&sim, &http).await;
    let url = generic_docs_url(&sim);

    let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN"), &token).await;
    assert_eq!(generic_ids(&body), DEMO_ADMIN_DOCUMENT_IDS.to_vec());
    let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=ADMIN&showdeleted=true"), &token).await;
    let ids = generic_ids(&body);
    assert!(ids.contains(&DEMO_DELETED_ADMIN_DOCUMENT_ID));
    assert_eq!(ids.len(), DEMO_ADMIN_DOCUMENT_IDS.len() + 1);
    let deleted = body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["documentid"].as_str().and_then(|id| id.parse().ok()) == Some(DEMO_DELETED_ADMIN_DOCUMENT_ID))
        .unwrap();
    assert_eq!(deleted["status"], "DELETED");
    assert!(deleted["deleteddatetime"].is_string());
    let (_, body) = get(&http, &format!("{url}?departmentid=1&status=deleted&showdeleted=true"), &token).await;
    assert_eq!(generic_ids(&body), vec![DEMO_DELETED_ADMIN_DOCUMENT_ID]);
    let (_, body) = get(&http, &format!("{url}?departmentid=1&status=DELETED"), &token).await;
    assert!(generic_ids(&body).is_empty());

    // A document deleted through the API leaves the generic list too.
    let doc_url = format!("{}/{}", docs_url(&sim, "clinicaldocument"), DEMO_CLINICAL_DOCUMENT_IDS[0]);
    let (status, _) = json_of(http.delete(&doc_url).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = get(&http, &format!("{url}?departmentid=1&documentclass=CLINICALDOCUMENT"), &token).await;
    assert_eq!(generic_ids(&body), vec![DEMO_CLINICAL_DOCUMENT_IDS[1]]);
    let (_, body) =
        get(&http, &format!("{url}?departmentid=1&documentclass=CLINICALDOCUMENT&showdeleted=true"), &token).await;
    assert_eq!(generic_ids(&body), DEMO_CLINICAL_DOCUMENT_IDS.to_vec());
}
