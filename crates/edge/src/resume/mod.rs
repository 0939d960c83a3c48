//! Resumable streams (opt-in per route, `resumable`): the stream node keeps a streaming answer's
//! events in a bounded buffer, keeps the engine going for a grace window after the client drops,
//! and replays what the client missed when it comes back with its stream id and cursor.

pub mod id;
