//! The in-memory index of the embedded log: where each durable event lives in the file, and
//! the positions of each stream's events. Built by recovery, extended by the writer after each
//! fdatasync, read by everyone else. It holds only durable events.

use std::collections::HashMap;
use std::sync::Arc;

/// Where one event's record lies in the log file, and what the frame said about it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventLoc {
    pub offset: u64,
    pub len: u32,
    pub stream: u32,
    pub version: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Indexed by position: positions are the global sequence number, 0-based.
    events: Vec<EventLoc>,
    stream_ids: HashMap<Arc<str>, u32>,
    stream_names: Vec<Arc<str>>,
    /// Indexed by stream id, then by version.
    stream_positions: Vec<Vec<u64>>,
}

impl Index {
    /// Number of durable events, which is also the next position.
    pub fn len(&self) -> u64 {
        self.events.len() as u64
    }

    /// Number of events in `stream` (its next version).
    pub fn stream_len(&self, stream: &str) -> Option<u64> {
        let id = self.stream_ids.get(stream)?;
        Some(self.stream_positions[*id as usize].len() as u64)
    }

    pub fn stream_name(&self, id: u32) -> &Arc<str> {
        &self.stream_names[id as usize]
    }

    /// Adds the next event; the caller guarantees `version` continues the stream.
    pub fn push(&mut self, stream: &str, offset: u64, len: u32, version: u64) {
        let id = match self.stream_ids.get(stream) {
            Some(id) => *id,
            None => {
                let id = self.stream_names.len() as u32;
                let name: Arc<str> = Arc::from(stream);
                self.stream_ids.insert(name.clone(), id);
                self.stream_names.push(name);
                self.stream_positions.push(Vec::new());
                id
            }
        };
        let position = self.events.len() as u64;
        self.stream_positions[id as usize].push(position);
        self.events.push(EventLoc {
            offset,
            len,
            stream: id,
            version,
        });
    }

    /// Locations of events with positions in `[from, from + max)`.
    pub fn range(&self, from: u64, max: usize) -> Vec<(u64, EventLoc)> {
        let start = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.events.len());
        let end = start.saturating_add(max).min(self.events.len());
        (start..end).map(|p| (p as u64, self.events[p])).collect()
    }

    /// Locations of `stream`'s events with versions in `[from_version, from_version + max)`.
    pub fn stream_range(
        &self,
        stream: &str,
        from_version: u64,
        max: usize,
    ) -> Vec<(u64, EventLoc)> {
        let Some(id) = self.stream_ids.get(stream) else {
            return Vec::new();
        };
        let positions = &self.stream_positions[*id as usize];
        let start = usize::try_from(from_version)
            .unwrap_or(usize::MAX)
            .min(positions.len());
        let end = start.saturating_add(max).min(positions.len());
        positions[start..end]
            .iter()
            .map(|p| (*p, self.events[*p as usize]))
            .collect()
    }
}
