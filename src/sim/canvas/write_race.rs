//! Canvas's lost-write race: creates that overlap on one note all answer 201, but only the last one to start is
//! stored (canvas.md §1.2 "Concurrency"). Creates on different notes never wait for each other.

use http::{HeaderValue, StatusCode, header};

use super::media_create::CreateDraft;
use super::responses::internal_error;
use super::{MediaRecord, Note, State};
use crate::sim::support::{SimResponse, empty_response};

impl State {
    /// The write inside Canvas. It stays in flight for `write_latency`; if another create on the same note starts
    /// meanwhile, this one is silently lost, yet still answers 201 (canvas.md §1.2 "Concurrency").
    pub(super) async fn commit_create(&self, draft: CreateDraft) -> SimResponse {
        let (media_id, ticket) = {
            let mut guard = self.data();
            let data = &mut *guard;
            let media_id = data.next_uuid("media");
            let note = data.notes.entry(draft.note_id.clone()).or_insert_with(|| Note {
                patient: draft.patient.clone(),
                encounter: draft.encounter.clone(),
                latest_ticket: 0,
                in_flight: 0,
            });
            note.latest_ticket += 1;
            note.in_flight += 1;
            let ticket = note.latest_ticket;
            let same_note = note.in_flight;
            data.in_flight_creates += 1;
            let stats = &mut data.stats;
            stats.max_concurrent_creates = stats.max_concurrent_creates.max(data.in_flight_creates);
            stats.max_concurrent_creates_same_encounter = stats.max_concurrent_creates_same_encounter.max(same_note);
            (media_id, ticket)
        };

        if !self.write_latency.is_zero() {
            tokio::time::sleep(self.write_latency).await;
        }

        {
            let mut guard = self.data();
            let data = &mut *guard;
            data.in_flight_creates = data.in_flight_creates.saturating_sub(1);
            let won = match data.notes.get_mut(&draft.note_id) {
                Some(note) => {
                    note.in_flight = note.in_flight.saturating_sub(1);
                    note.latest_ticket == ticket
                }
                None => false,
            };
            if won {
                let extension = match draft.content_type.as_str() {
                    "image/png" => "png",
                    "image/heic" => "heic",
                    _ => "jpg",
                };
                let s3_key = format!("fumage-sim/{}.{extension}", media_id.replace('-', ""));
                data.s3_keys.insert(s3_key.clone(), media_id.clone());
                data.media_order.push(media_id.clone());
                data.media.insert(
                    media_id.clone(),
                    MediaRecord {
                        id: media_id.clone(),
                        status: draft.status,
                        patient: draft.patient,
                        encounter: draft.encounter,
                        note_id: draft.note_id,
                        operator: draft.operator,
                        content_type: draft.content_type,
                        title: draft.title,
                        notes: draft.notes,
                        data: draft.data,
                        s3_key,
                    },
                );
            } else {
                data.stats.creates_lost += 1;
            }
            data.stats.creates_received += 1;
        }

        let mut response = empty_response(StatusCode::CREATED);
        match HeaderValue::from_str(&format!("{}/Media/{media_id}", self.fhir_base)) {
            Ok(location) => {
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            Err(_) => internal_error(),
        }
    }
}
