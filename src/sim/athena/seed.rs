//! athena's demo data: the sandbox practice, its two patients, the demo patient's insurances, and the seeded card,
//! photo, licence and documents every simulator starts with.

use bytes::Bytes;
use serde_json::{Value, json};

use super::dates::fmt_date;
use super::document_classes::DocClass;
use super::images::Slot;
use super::{Data, Document, Original, Page};

/// athena's shared preview sandbox practice; the default practice of the simulator.
pub const DEMO_PRACTICE_ID: &str = "195900";
/// The demo patient (BRIEF §5).
pub const DEMO_PATIENT_ID: &str = "1234";
/// A second patient, registered without a department or insurance (new registrations look like this), so
/// defaults the gateway looks up (primary department, primary insurance) cannot be found.
pub const UNASSIGNED_PATIENT_ID: &str = "1240";
/// The demo patient's primary department.
pub const DEMO_DEPARTMENT_ID: &str = "1";
/// A department of the practice the demo patient is **not** registered in (documents there answer 400).
pub const OTHER_DEPARTMENT_ID: &str = "2";
/// The demo patient's primary insurance (`sequencenumber` 1). Seeded with a card image.
pub const DEMO_PRIMARY_INSURANCE_ID: &str = "5678";
/// The demo patient's secondary insurance (`sequencenumber` 2). No card image at start.
pub const DEMO_SECONDARY_INSURANCE_ID: &str = "5679";
/// The demo patient's tertiary insurance (`sequencenumber` 3), active. No card image at start.
pub const DEMO_TERTIARY_INSURANCE_ID: &str = "5680";
/// A cancelled insurance of the demo patient, listed only with `showcancelled=true`.
pub const DEMO_CANCELLED_INSURANCE_ID: &str = "5670";
/// Seeded, not deleted admin documents of the demo patient in department 1, in list order.
pub const DEMO_ADMIN_DOCUMENT_IDS: [u64; 7] = [44987, 44988, 44989, 44990, 44991, 44992, 44993];
/// A seeded admin document that is already soft deleted.
pub const DEMO_DELETED_ADMIN_DOCUMENT_ID: u64 = 44994;
/// Seeded clinical documents of the demo patient.
pub const DEMO_CLINICAL_DOCUMENT_IDS: [u64; 2] = [45001, 45002];
/// Seeded imaging results of the demo patient.
pub const DEMO_IMAGING_RESULT_IDS: [u64; 2] = [45011, 45012];
/// Seeded medical record document of the demo patient.
pub const DEMO_MEDICAL_RECORD_ID: u64 = 45021;
/// Seeded encounter document (ENCOUNTERDOCUMENT_IMAGEDOC) of the demo patient.
pub const DEMO_ENCOUNTER_DOCUMENT_ID: u64 = 45031;
/// Seeded lab result of the demo patient.
pub const DEMO_LAB_RESULT_ID: u64 = 45041;

/// First id handed out to documents created through the API (deterministic: creates count up from here).
pub(super) const FIRST_CREATED_DOCUMENT_ID: u64 = 200_001;
pub(super) const FIRST_PAGE_ID: u64 = 900_001;
const SEED_EPOCH: i64 = 1_700_000_000;

// Demo images a viewer opens, a few hundred bytes each (made with ImageMagick): a 64x40 insurance card and driver's
// licence (JPEG, as athena's `jpegoutput` serves them), a 32x32 patient photo and a 24x32 document page (PNG).
const SEED_CARD_JPEG: &[u8] = include_bytes!("demo/card.jpg");
const SEED_LICENCE_JPEG: &[u8] = include_bytes!("demo/licence.jpg");
const SEED_PHOTO_PNG: &[u8] = include_bytes!("demo/photo.png");
const SEED_PAGE_PNG: &[u8] = include_bytes!("demo/page.png");
/// A tiny PDF used as the original upload of seeded UPLOAD documents.
const SEED_PDF: &[u8] = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n";

pub(super) struct Insurance {
    pub(super) id: &'static str,
    sequence: &'static str,
    package: u64,
    plan: &'static str,
    kind: &'static str,
    member: &'static str,
    eligibility: &'static str,
    expiration: &'static str,
    pub(super) cancelled: bool,
}

impl Insurance {
    pub(super) fn render(&self) -> Value {
        let mut value = json!({
            "insuranceid": self.id,
            "sequencenumber": self.sequence,
            "insurancepackageid": self.package,
            "insuranceplanname": self.plan,
            "insurancetype": self.kind,
            "insuranceidnumber": self.member,
            "eligibilitystatus": self.eligibility,
            "expirationdate": self.expiration,
            "insurancepolicyholder": "JANE SANDBOX",
            "insurancepolicyholderfirstname": "JANE",
            "insurancepolicyholderlastname": "SANDBOX",
            "relationshiptoinsured": "Self",
        });
        if self.cancelled {
            value["cancelled"] = json!("01/01/2023");
        }
        value
    }
}

pub(super) fn insurances() -> [Insurance; 4] {
    [
        Insurance {
            id: DEMO_PRIMARY_INSURANCE_ID,
            sequence: "1",
            package: 46_001,
            plan: "BLUE CROSS BLUE SHIELD PPO",
            kind: "Group Policy",
            member: "XYZ123456789",
            eligibility: "Eligible",
            expiration: "12/31/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_SECONDARY_INSURANCE_ID,
            sequence: "2",
            package: 46_002,
            plan: "AETNA DENTAL",
            kind: "Group Policy",
            member: "W987654321",
            eligibility: "Eligible",
            expiration: "06/30/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_TERTIARY_INSURANCE_ID,
            sequence: "3",
            package: 46_004,
            plan: "VSP VISION CARE",
            kind: "Group Policy",
            member: "VSP445566778",
            eligibility: "Eligible",
            expiration: "09/30/2027",
            cancelled: false,
        },
        Insurance {
            id: DEMO_CANCELLED_INSURANCE_ID,
            sequence: "1",
            package: 46_003,
            plan: "UNITED HEALTHCARE CHOICE",
            kind: "Group Policy",
            member: "UHC000111222",
            eligibility: "Ineligible",
            expiration: "12/31/2022",
            cancelled: true,
        },
    ]
}

pub(super) fn seed(data: &mut Data) {
    let png = Bytes::from_static(SEED_PAGE_PNG);
    let pdf = Bytes::from_static(SEED_PDF);
    data.images.insert(
        (DEMO_PATIENT_ID.to_owned(), Slot::InsuranceCard(DEMO_PRIMARY_INSURANCE_ID.to_owned())),
        Bytes::from_static(SEED_CARD_JPEG),
    );
    data.images.insert((DEMO_PATIENT_ID.to_owned(), Slot::Photo), Bytes::from_static(SEED_PHOTO_PNG));
    data.images.insert((DEMO_PATIENT_ID.to_owned(), Slot::DriversLicense), Bytes::from_static(SEED_LICENCE_JPEG));

    let admin_subclasses = [
        "ADMIN_INSURANCECARD",
        "ADMIN_CONSENT",
        "ADMIN_HIPAA",
        "ADMIN_REFERRAL",
        "ADMIN_INSURANCECARD",
        "ADMIN_LEGAL",
        "ADMIN_BILLING",
    ];
    let mut seeds: Vec<(u64, DocClass, &str, Option<&str>)> = DEMO_ADMIN_DOCUMENT_IDS
        .iter()
        .zip(admin_subclasses)
        .map(|(id, subclass)| (*id, DocClass::Admin, subclass, None))
        .collect();
    seeds.push((DEMO_DELETED_ADMIN_DOCUMENT_ID, DocClass::Admin, "ADMIN_CONSENT", None));
    seeds.push((DEMO_CLINICAL_DOCUMENT_IDS[0], DocClass::ClinicalDocument, "CLINICALDOCUMENT_CONSULTNOTE", None));
    seeds.push((DEMO_CLINICAL_DOCUMENT_IDS[1], DocClass::ClinicalDocument, "CLINICALDOCUMENT", None));
    seeds.push((DEMO_IMAGING_RESULT_IDS[0], DocClass::ImagingResult, "IMAGINGRESULT", None));
    seeds.push((DEMO_IMAGING_RESULT_IDS[1], DocClass::ImagingResult, "IMAGINGRESULT", None));
    seeds.push((DEMO_MEDICAL_RECORD_ID, DocClass::MedicalRecord, "MEDICALRECORD_HISTORICAL", None));
    seeds.push((DEMO_ENCOUNTER_DOCUMENT_ID, DocClass::EncounterDocument, "ENCOUNTERDOCUMENT_IMAGEDOC", Some("35")));
    seeds.push((DEMO_LAB_RESULT_ID, DocClass::LabResult, "LABRESULT", None));

    for (index, (id, class, subclass, encounter)) in seeds.into_iter().enumerate() {
        let offset = index as i64;
        let created = SEED_EPOCH + offset * 86_400;
        let page_id = data.next_page_id;
        data.next_page_id += 1;
        data.pages.insert(page_id, Page { document: id, ordering: 1, content_type: "image/png", bytes: png.clone() });
        // Every other seed is an upload that keeps its original PDF; the rest came in over an interface.
        let upload = index % 2 == 0;
        let deleted = (id == DEMO_DELETED_ADMIN_DOCUMENT_ID).then_some(created + 3600);
        data.documents.insert(
            id,
            Document {
                id,
                class,
                patient: DEMO_PATIENT_ID.to_owned(),
                department: DEMO_DEPARTMENT_ID.to_owned(),
                subclass: subclass.to_owned(),
                documenttypeid: Some(186_000 + offset as u64),
                description: subclass.replace('_', " ").to_lowercase(),
                status: if deleted.is_some() { "DELETED".to_owned() } else { "CLOSED".to_owned() },
                priority: 2,
                providerid: Some(71),
                clinicalproviderid: class.clinical().then_some(71),
                internalnote: Some(format!("Seeded document {id}")),
                documentdate: Some(fmt_date(created)),
                observationdate: class.clinical().then(|| fmt_date(created)),
                observationtime: class.clinical().then(|| "09:30".to_owned()),
                accessionid: None,
                internalaccessionid: None,
                tietoorderid: None,
                encounterid: encounter.map(str::to_owned),
                source: if upload { "UPLOAD" } else { "INTERFACE" },
                route: if upload { "WEBSERVICE" } else { "INTERFACE" },
                created,
                modified: deleted.unwrap_or(created),
                deleted,
                pages: vec![page_id],
                original: upload.then(|| Original {
                    bytes: pdf.clone(),
                    content_type: "application/pdf",
                    filename: format!("seed{id}"),
                }),
            },
        );
    }
}
