//! The following side: poll a versioned resource with `?since=V&wait=W`, hand each newer
//! version to the caller, and back off while the server cannot be reached.

use okome_core::http::{Client, GetError};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::{Duration, Instant};

pub use okome_wire::Versioned;

/// The result of one poll.
#[derive(Debug)]
pub enum Update<T> {
    /// A version other than the one asked about.
    Changed(T),
    /// The server confirmed the version asked about (304).
    Unchanged,
}

/// Why a poll gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The server could not be reached or did not answer in time.
    #[error(transparent)]
    Get(#[from] GetError),
    /// It answered with an unexpected status.
    #[error("{url}: answered {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: http::StatusCode,
        /// The start of its body.
        body: String,
    },
    /// Its answer does not decode.
    #[error("{url}: unreadable answer: {message}")]
    Decode {
        /// What was asked.
        url: String,
        /// The decoder's message.
        message: String,
    },
}

/// What [`Subscriber::follow`] tells its caller.
#[derive(Debug)]
pub enum Event<T> {
    /// A newer version.
    Changed(T),
    /// The version held is still current.
    Confirmed,
    /// The server answers again after failures (sent before that answer's event).
    Recovered,
    /// A poll failed; `first` is true for the first failure after a success (log it once).
    Failed {
        /// Why.
        error: PollError,
        /// The first failure in a row.
        first: bool,
    },
}

/// Exponential backoff between `initial` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
        }
    }

    /// The delay to wait now; the next one is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Follows one long-poll resource, e.g. `http://10.0.0.5:7070/v1/snapshot`.
#[derive(Debug, Clone)]
pub struct Subscriber {
    client: Client,
    url: String,
    auth: Option<http::HeaderValue>,
    wait: Duration,
    slack: Duration,
    backoff: Backoff,
}

impl Subscriber {
    /// A subscriber asking the server to hold each poll up to `wait`, giving it `slack` more to
    /// answer, and backing off per `backoff` when it cannot be reached; `auth` is sent as
    /// `Authorization`.
    pub fn new(
        url: String,
        auth: Option<http::HeaderValue>,
        wait: Duration,
        slack: Duration,
        backoff: Backoff,
    ) -> Self {
        Subscriber {
            client: Client::new(),
            url,
            auth,
            wait,
            slack,
            backoff,
        }
    }

    /// The resource followed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One poll: the resource now (`since: None`), or after waiting for a version other than
    /// `since`. Also returns how long the call took.
    pub async fn poll<T: DeserializeOwned>(
        &self,
        since: Option<u64>,
    ) -> (Result<Update<T>, PollError>, Duration) {
        let url = match since {
            Some(v) => format!("{}?since={v}&wait={}ms", self.url, self.wait.as_millis()),
            None => self.url.clone(),
        };
        let started = Instant::now();
        let answer = self
            .client
            .get_response(&url, self.auth.as_ref(), self.wait + self.slack)
            .await;
        let took = started.elapsed();
        let result = match answer {
            Err(e) => Err(PollError::Get(e)),
            Ok((http::StatusCode::NOT_MODIFIED, _)) => Ok(Update::Unchanged),
            Ok((http::StatusCode::OK, body)) => serde_json::from_slice(&body)
                .map(Update::Changed)
                .map_err(|e| PollError::Decode {
                    url: self.url.clone(),
                    message: e.to_string(),
                }),
            Ok((status, body)) => Err(PollError::Status {
                url: self.url.clone(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            }),
        };
        (result, took)
    }

    /// Polls forever from version `since`, handing every outcome to `on` (which may take its
    /// time: the next poll starts when it is done). Backs off after failures.
    pub async fn follow<T, F, Fut>(&self, mut since: Option<u64>, mut on: F)
    where
        T: DeserializeOwned + Versioned,
        F: FnMut(Event<T>, Duration) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = self.backoff.clone();
        let mut failing = false;
        loop {
            let (result, took) = self.poll::<T>(since).await;
            let update = match result {
                Ok(u) => u,
                Err(error) => {
                    let first = !failing;
                    failing = true;
                    on(Event::Failed { error, first }, took).await;
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            if failing {
                failing = false;
                on(Event::Recovered, took).await;
            }
            backoff.reset();
            match update {
                Update::Changed(v) => {
                    since = Some(v.version());
                    on(Event::Changed(v), took).await;
                }
                Update::Unchanged => on(Event::Confirmed, took).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_to_its_maximum_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(250), ms(1000));
        let seen: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(250), ms(500), ms(1000), ms(1000)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(250));
    }
}
