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

/// Admin create fields (athena.md §2d, "Create fields for class-specific endpoints"): the base of most classes.
const ADMIN_CREATE: &[&str] = &[
    "departmentid",
    "documentsubclass",
    "attachmentcontents",
    "attachmenttype",
    "autoclose",
    "documentdata",
    "documentdate",
    "documenttypeid",
    "entityid",
    "entitytype",
    "internalnote",
    "originalfilename",
    "priority",
    "providerid",
];
/// What clinical documents add on create.
const CLINICAL_CREATE_EXTRA: &[&str] = &["clinicalproviderid", "observationdate", "observationtime"];
/// What imaging results add on create.
const IMAGING_CREATE_EXTRA: &[&str] = &[
    "accessionid",
    "internalaccessionidentifier",
    "facilityid",
    "interpretation",
    "patientnote",
    "reportstatus",
    "resultstatus",
    "tietoorderid",
    "observationdate",
    "observationtime",
    "includefilelink",
    "ssotarget",
];
/// Medical records take a short list of their own: no autoclose, attachment type, file name or dates.
const MEDICAL_RECORD_CREATE: &[&str] = &[
    "departmentid",
    "documentsubclass",
    "attachmentcontents",
    "documentdata",
    "internalnote",
    "priority",
    "providerid",
];
/// Admin update fields; `internalnote` appends.
const ADMIN_UPDATE: &[&str] = &["documentdate", "documenttypeid", "internalnote", "priority", "providerid"];
/// What clinical documents add on update, among them `replaceinternalnote`.
const CLINICAL_UPDATE_EXTRA: &[&str] =
    &["clinicalproviderid", "observationdate", "observationtime", "replaceinternalnote"];

impl DocClass {
    /// The class's path segment (`/documents/{cls}`).
    pub(super) fn segment(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::ClinicalDocument => "clinicaldocument",
            Self::EncounterDocument => "encounterdocument",
            Self::ImagingResult => "imagingresult",
            Self::LabResult => "labresult",
            Self::MedicalRecord => "medicalrecord",
        }
    }

    /// The form fields a create of this class reads (athena.md §2d). athena.md lists none for encounter documents and
    /// lab results; they are taken to read the clinical fields.
    pub(super) fn create_fields(self) -> Vec<&'static str> {
        match self {
            Self::Admin => ADMIN_CREATE.to_vec(),
            Self::MedicalRecord => MEDICAL_RECORD_CREATE.to_vec(),
            Self::ImagingResult => [ADMIN_CREATE, IMAGING_CREATE_EXTRA].concat(),
            Self::ClinicalDocument | Self::EncounterDocument | Self::LabResult => {
                [ADMIN_CREATE, CLINICAL_CREATE_EXTRA].concat()
            }
        }
    }

    /// The form fields a metadata update of this class reads: athena.md lists the admin fields and what clinical
    /// documents add (`replaceinternalnote` among them); every other class is taken to read the admin fields, so its
    /// internal note can only be appended to.
    pub(super) fn update_fields(self) -> Vec<&'static str> {
        match self {
            Self::ClinicalDocument => [ADMIN_UPDATE, CLINICAL_UPDATE_EXTRA].concat(),
            _ => ADMIN_UPDATE.to_vec(),
        }
    }

    /// The query parameters of a single-document GET: `getentityinfo`, and `showccdaxml` for clinical documents.
    /// `showmetadata` is a list parameter only.
    pub(super) fn read_params(self) -> &'static [&'static str] {
        match self {
            Self::ClinicalDocument => &["getentityinfo", "showccdaxml"],
            _ => &["getentityinfo"],
        }
    }

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

    /// Classes whose seeded documents carry a clinical provider and an observation date.
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
