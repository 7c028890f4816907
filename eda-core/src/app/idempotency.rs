//! Idempotent commands: the outcome of an earlier execution with the same key,
//! found by its key record, stands for a retry's.

use uuid::Uuid;

use super::execute::Committed;
use super::replay::{decode, REPLAY_PAGE};
use super::App;
use crate::aggregate::Aggregate;
use crate::command::HandledCommand;
use crate::envelope::{Metadata, OwnedStreamId, StreamId};
use crate::error::{CommandError, StoreError};

impl App {
    /// Whether another execution of this idempotent command has committed; its
    /// outcome then stands for this one.
    pub(super) async fn committed_meanwhile<C: HandledCommand>(
        &self,
        metadata: &Metadata,
        id: &str,
    ) -> Result<Option<Committed<C::Aggregate>>, CommandError<<C::Aggregate as Aggregate>::Error>>
    {
        match &metadata.idempotency_key {
            Some(key) => {
                let fingerprint = metadata.command_fingerprint;
                Box::pin(self.first_outcome::<C>(key, id, fingerprint)).await
            }
            None => Ok(None),
        }
    }

    /// The outcome of an earlier execution with `key`, if there was one: its key
    /// record, and the events it appended (read by version, so the cost does not
    /// grow with the stream). A key first used for another command, aggregate or
    /// arguments is an error.
    pub(super) async fn first_outcome<C: HandledCommand>(
        &self,
        key: &str,
        id: &str,
        fingerprint: Option<Uuid>,
    ) -> Result<Option<Committed<C::Aggregate>>, CommandError<<C::Aggregate as Aggregate>::Error>>
    {
        let store = &self.inner.store;
        let record = store.read_idempotency_key(key).await;
        let Some(record) = record.map_err(CommandError::Store)? else {
            return Ok(None);
        };
        let same_command = record.command == C::NAME;
        let same_stream =
            record.aggregate_type == <C::Aggregate as Aggregate>::TYPE && record.aggregate_id == id;
        let same_arguments = match (record.fingerprint, fingerprint) {
            (Some(first), Some(this)) => first == this,
            _ => true,
        };
        if !(same_command && same_stream && same_arguments) {
            return Err(CommandError::IdempotencyKeyReused {
                key: key.to_owned(),
                first_command: record.command,
                first_stream: OwnedStreamId {
                    aggregate_type: record.aggregate_type,
                    aggregate_id: record.aggregate_id,
                },
                other_arguments: same_command && same_stream,
            });
        }
        let stream = StreamId {
            aggregate_type: <C::Aggregate as Aggregate>::TYPE,
            aggregate_id: id,
        };
        let mut events = Vec::new();
        let mut after = record.expected_version;
        while after < record.version {
            let page = (record.version - after).min(REPLAY_PAGE as u64) as usize;
            let page = store.read_for_replay(stream, after, page).await;
            let page = page.map_err(CommandError::Store)?;
            let missing = |after: u64| {
                CommandError::Store(StoreError::Corrupt {
                    position: record.position.unwrap_or_default(),
                    what: format!(
                        "idempotency key `{key}` names version {} of {}/{id}, which is not stored",
                        after + 1,
                        stream.aggregate_type
                    ),
                })
            };
            if page.is_empty() {
                return Err(missing(after));
            }
            for event in page.iter().take_while(|e| e.version <= record.version) {
                if event.version != after + 1 {
                    return Err(missing(after));
                }
                let decoded = decode::<C::Aggregate>(&event.as_event_ref(stream));
                events.push(decoded.map_err(CommandError::Decode)?);
                after = event.version;
            }
        }
        Ok(Some(Committed {
            version: record.version,
            position: record.position,
            events,
            duplicate: true,
        }))
    }
}
