//! Canvas's demo fixtures: the patient, practitioner and encounters of its documentation examples, and the note
//! each encounter's Media land in.

use sha2::{Digest, Sha256};

/// Patient id used in Canvas's documentation examples; the default known patient.
pub const DEMO_PATIENT_ID: &str = "b8dfa97bdcdf4754bcd8197ca78ef0f0";
/// Practitioner id used in Canvas's documentation examples; the default known practitioner.
pub const DEMO_PRACTITIONER_ID: &str = "76428138e7644ce6b7eb426fdbbf2f39";
/// Encounter id used in Canvas's documentation examples; belongs to [`DEMO_PATIENT_ID`].
pub const DEMO_ENCOUNTER_ID: &str = "eae3c8a5-a129-4960-9715-fc26da30eccc";
/// Further encounters of [`DEMO_PATIENT_ID`], so tests can create on several encounters in parallel.
pub const DEMO_EXTRA_ENCOUNTER_IDS: [&str; 8] = [
    "0c6f2a1e-5b3d-4e8a-9f71-2d4c6b8a1e01",
    "1d7a3b2f-6c4e-4f9b-8a82-3e5d7c9b2f02",
    "2e8b4c3a-7d5f-4a0c-9b93-4f6e8d0c3a03",
    "3f9c5d4b-8e6a-4b1d-8ca4-5a7f9e1d4b04",
    "4a0d6e5c-9f7b-4c2e-9db5-6b8a0f2e5c05",
    "5b1e7f6d-0a8c-4d3f-8ec6-7c9b1a3f6d06",
    "6c2f8a7e-1b9d-4e4a-9fd7-8d0c2b4a7e07",
    "7d3a9b8f-2c0e-4f5b-8ae8-9e1d3c5b8f08",
];
/// The practitioner Canvas records as `operator` when a create omits it ("Canvas Bot").
pub const CANVAS_BOT_PRACTITIONER_ID: &str = "5eede137ecfe4124b8b773040e33be14";

/// The demo patient's extra encounters as owned strings (see [`DEMO_EXTRA_ENCOUNTER_IDS`]).
pub fn demo_extra_encounters() -> Vec<String> {
    DEMO_EXTRA_ENCOUNTER_IDS.iter().map(|id| (*id).to_owned()).collect()
}

/// The id of the note an encounter's Media land in (each encounter has exactly one note). Deterministic, so tests can
/// address a note through the note-id extension without asking the simulator.
pub fn note_id_for_encounter(encounter_id: &str) -> String {
    let digest = Sha256::digest(format!("canvas-sim-note:{encounter_id}").as_bytes());
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(raw).to_string()
}
