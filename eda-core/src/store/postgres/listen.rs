//! Other writers' appends, heard: each append notifies its schema's channel of
//! its last position (`pg_notify` in its statement, delivered when its
//! transaction commits), and while runners listen, the store keeps a connection
//! of its own that `LISTEN`s on that channel, reconnecting after failures.
//!
//! The price: a transaction that notifies holds PostgreSQL's lock on the
//! notification queue from its commit's start until the commit is on disk, so
//! the commits of appends that notify do not share an `fsync`. Batched appends
//! notify once per statement, and a store has at most one append of its own in
//! flight beside its committing tasks' batches, so measured on the store
//! benchmark this costs a few percent. A notification sent after the commit,
//! as a statement of its own (which writes no commit record, and so holds the
//! lock for an instant), cost more: the statement, once per command.
//!
//! A notification can arrive before the horizon of the log's reads passes its
//! position (a transaction that began earlier is still running): the runner
//! then reads again until it gets there.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use super::sql;
use crate::store::signal::{Listener, LogSignal};

/// The longest channel name PostgreSQL takes (`NAMEDATALEN - 1` bytes).
const MAX_CHANNEL: usize = 63;

/// The first pause before connecting again after a failure; it doubles up to
/// [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// The channel of a store's schema, and how to listen on it.
pub(super) struct Listen {
    /// `eda.<schema>`, or for a long schema name its start and a hash of all of
    /// it, within PostgreSQL's limit.
    pub(super) channel: String,
    /// The listening connection's settings: the store's.
    config: tokio_postgres::Config,
    pub(super) signal: Arc<LogSignal>,
}

impl Listen {
    pub(super) fn new(schema: &str, config: tokio_postgres::Config) -> Self {
        Listen {
            channel: channel(schema),
            config,
            signal: Arc::new(LogSignal::default()),
        }
    }

    /// A receiver of the positions appended, with the listening task started
    /// on the caller's runtime if none runs. Outside a runtime, a receiver
    /// that hears of nothing (its runner's poll finds the appends).
    pub(super) fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.signal.subscribe_with(|listener| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (config, channel) = (self.config.clone(), self.channel.clone());
                runtime.spawn(listen(config, channel, listener));
            }
        })
    }
}

/// The channel of `schema` (lowercase letters, digits and `_`, as the store
/// checked): `eda.<schema>`, or for a name too long, its start and a hash of it.
pub(super) fn channel(schema: &str) -> String {
    let channel = format!("eda.{schema}");
    if channel.len() <= MAX_CHANNEL {
        return channel;
    }
    // FNV-1a: the same in every process and every build.
    let hash = schema
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let hash = format!(".{hash:016x}");
    format!("{}{hash}", &channel[..MAX_CHANNEL - hash.len()])
}

/// Listens while it is wanted, connecting again after a failure.
async fn listen(config: tokio_postgres::Config, channel: String, mut listener: Listener) {
    let mut pause = FIRST_PAUSE;
    while listener.wanted() {
        let error = tokio::select! {
            error = session(&config, &channel, &listener) => error,
            () = listener.unwanted() => continue,
        };
        tracing::warn!(%error, channel, "listening for appends failed: connecting again");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = listener.unwanted() => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One connection: `LISTEN`, then the head of the log (appends made while no
/// connection listened went unheard), then every notification, until the
/// connection fails. Why it ended.
async fn session(config: &tokio_postgres::Config, channel: &str, listener: &Listener) -> String {
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(error) => return error.to_string(),
    };
    let set_up = async {
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await?;
        let head: i64 = client.query_one(sql::HEAD, &[]).await?.try_get(0)?;
        Ok::<_, tokio_postgres::Error>(head)
    };
    let mut set_up = std::pin::pin!(set_up);
    let mut listening = false;
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx));
        tokio::select! {
            message = message => match message {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if let Ok(position) = notification.payload().parse() {
                        listener.committed(position);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return error.to_string(),
                None => return "the server closed the connection".into(),
            },
            head = &mut set_up, if !listening => match head {
                Ok(head) => {
                    listening = true;
                    listener.committed(u64::try_from(head).unwrap_or_default());
                }
                Err(error) => return error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fit_postgresql_and_differ_by_schema() {
        assert_eq!(channel("public"), "eda.public");
        let long = "s".repeat(63);
        let (a, b) = (channel(&long), channel(&format!("{long}x")));
        assert_eq!(a.len(), MAX_CHANNEL);
        assert_eq!(b.len(), MAX_CHANNEL);
        assert_ne!(a, b);
        assert_eq!(channel(&long), a);
    }
}
