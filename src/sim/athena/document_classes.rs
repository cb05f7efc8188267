//! athena's document classes (admin, clinical document, encounter document, imaging result, lab result, medical
//! record): their path segments, id fields, subclasses and JSON-type quirks, and which list a GET asks for.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DocClass {
    Admin,
    ClinicalDocument,
    EncounterDocument,
    ImagingResult,
    LabResult,
    MedicalRecord,
}

const ADMIN_SUBCLASSES: [&str; 11] = [
    "ADMIN_BILLING",
    "ADMIN_CONSENT",
    "ADMIN_HIPAA",
    "ADMIN_INSURANCEAPPROVAL",
    "ADMIN_INSURANCECARD",
    "ADMIN_INSURANCEDENIAL",
    "ADMIN_LEGAL",
    "ADMIN_MEDICALRECORDREQ",
    "ADMIN_REFERRAL",
    "ADMIN_SIGNEDFORMSLETTERS",
    "ADMIN_VACCINATIONRECORD",
];
const CLINICAL_SUBCLASSES: [&str; 6] = [
    "CLINICALDOCUMENT",
    "CLINICALDOCUMENT_ADMISSIONDISCHARGE",
    "CLINICALDOCUMENT_CONSULTNOTE",
    "CLINICALDOCUMENT_MENTALHEALTH",
    "CLINICALDOCUMENT_OPERATIVENOTE",
    "CLINICALDOCUMENT_URGENTCARE",
];
const ENCOUNTER_SUBCLASSES: [&str; 4] = [
    "ENCOUNTERDOCUMENT_IMAGEDOC",
    "ENCOUNTERDOCUMENT_PATIENTHISTORY",
    "ENCOUNTERDOCUMENT_PROCEDUREDOC",
    "ENCOUNTERDOCUMENT_PROGRESSNOTE",
];
const MEDICAL_RECORD_SUBCLASSES: [&str; 6] = [
    "MEDICALRECORD_CHARTTOABSTRACT",
    "MEDICALRECORD_COUMADIN",
    "MEDICALRECORD_GROWTHCHART",
    "MEDICALRECORD_HISTORICAL",
    "MEDICALRECORD_PATIENTDIARY",
    "MEDICALRECORD_VACCINATION",
];

impl DocClass {
    pub(super) fn from_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "admin" => Self::Admin,
            "clinicaldocument" => Self::ClinicalDocument,
            "encounterdocument" => Self::EncounterDocument,
            "imagingresult" => Self::ImagingResult,
            "labresult" => Self::LabResult,
            "medicalrecord" => Self::MedicalRecord,
            _ => return None,
        })
    }

    pub(super) fn id_field(self) -> &'static str {
        match self {
            Self::Admin => "adminid",
            Self::ClinicalDocument => "clinicaldocumentid",
            Self::EncounterDocument => "encounterdocumentid",
            Self::ImagingResult => "imagingresultid",
            Self::LabResult => "labresultid",
            Self::MedicalRecord => "medicalrecordid",
        }
    }

    pub(super) fn list_key(self) -> &'static str {
        match self {
            Self::Admin => "admins",
            Self::ClinicalDocument => "clinicaldocuments",
            Self::EncounterDocument => "encounterdocuments",
            Self::ImagingResult => "imagingresults",
            Self::LabResult => "labresults",
            Self::MedicalRecord => "medicalrecords",
        }
    }

    pub(super) fn documentclass(self) -> &'static str {
        match self {
            Self::Admin => "ADMIN",
            Self::ClinicalDocument => "CLINICALDOCUMENT",
            Self::EncounterDocument => "ENCOUNTERDOCUMENT",
            Self::ImagingResult => "IMAGINGRESULT",
            Self::LabResult => "LABRESULT",
            Self::MedicalRecord => "MEDICALRECORD",
        }
    }

    /// Classes whose write responses carry `success` (and the new id) as strings; the others use JSON booleans and
    /// numbers (athena.md §6 "Inconsistent JSON types").
    pub(super) fn stringly(self) -> bool {
        matches!(self, Self::Admin | Self::MedicalRecord)
    }

    /// Classes with the clinical update fields (`clinicalproviderid`, `observationdate`/`time`, `replaceinternalnote`).
    pub(super) fn clinical(self) -> bool {
        !matches!(self, Self::Admin | Self::MedicalRecord)
    }

    pub(super) fn subclass_ok(self, subclass: &str) -> bool {
        match self {
            Self::Admin => ADMIN_SUBCLASSES.contains(&subclass),
            Self::ClinicalDocument => CLINICAL_SUBCLASSES.contains(&subclass),
            Self::EncounterDocument => ENCOUNTER_SUBCLASSES.contains(&subclass),
            Self::ImagingResult => subclass == "IMAGINGRESULT",
            Self::LabResult => subclass == "LABRESULT",
            Self::MedicalRecord => MEDICAL_RECORD_SUBCLASSES.contains(&subclass),
        }
    }

    /// The class named by athena's `documentclass` value (`ADMIN`, `CLINICALDOCUMENT`, …), case-insensitively.
    pub(super) fn from_documentclass(name: &str) -> Option<Self> {
        [
            Self::Admin,
            Self::ClinicalDocument,
            Self::EncounterDocument,
            Self::ImagingResult,
            Self::LabResult,
            Self::MedicalRecord,
        ]
        .into_iter()
        .find(|class| class.documentclass().eq_ignore_ascii_case(name))
    }
}

/// Which document list a GET asks for (athena.md §2d).
#[derive(Debug, Clone, Copy)]
pub(super) enum DocumentList {
    /// `GET /patients/{pid}/documents/{cls}`: one class, listed under `<cls>s`.
    Class(DocClass),
    /// The generic (older) `GET /patients/{pid}/documents`: every class, listed under `documents`, with the extra
    /// `documentclass` and `startdate`/`enddate` filters.
    Generic,
}

impl DocumentList {
    pub(super) fn key(self) -> &'static str {
        match self {
            Self::Class(class) => class.list_key(),
            Self::Generic => "documents",
        }
    }
}
