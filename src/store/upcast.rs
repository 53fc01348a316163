//! Reading stored events whatever their `event_version`: each payload is brought up to
//! today's shape by the upcasters registered here, then decoded. Event types are never
//! renamed; a changed payload gets a new version and an upcaster from the old one.

use serde_json::Value;

use crate::command::{EVENT_VERSION, EmailEvent};

/// One upcaster: turns `event_type` at `from_version` into the next version.
pub struct Upcaster {
    /// The event type it applies to.
    pub event_type: &'static str,
    /// The version it reads.
    pub from_version: &'static str,
    /// The version it writes.
    pub to_version: &'static str,
    /// The conversion.
    pub convert: fn(Value) -> Value,
}

/// Every upcaster, oldest first. (Version 1.0 is the first schema: none yet.)
pub const UPCASTERS: &[Upcaster] = &[];

/// Decodes a stored payload of `event_type` at `version`.
pub fn decode(event_type: &str, version: &str, payload: Value) -> Result<EmailEvent, String> {
    decode_with(UPCASTERS, event_type, version, payload)
}

/// [`decode`] with a given set of upcasters.
pub fn decode_with(
    upcasters: &[Upcaster],
    event_type: &str,
    version: &str,
    payload: Value,
) -> Result<EmailEvent, String> {
    let mut version = version.to_owned();
    let mut payload = payload;
    while version != EVENT_VERSION {
        let Some(up) = upcasters.iter().find(|u| u.event_type == event_type && u.from_version == version) else {
            return Err(format!("no upcaster from {event_type} version {version} to {EVENT_VERSION}"));
        };
        payload = (up.convert)(payload);
        version = up.to_version.to_owned();
    }
    serde_json::from_value(payload).map_err(|e| e.to_string())
}

/// An [`Upcaster`] as cqrs-es wants it, so commands on emails with old events work too.
pub struct CqrsUpcaster(pub &'static Upcaster);

impl cqrs_es::persist::EventUpcaster for CqrsUpcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        self.0.event_type == event_type && self.0.from_version == event_version
    }

    fn upcast(&self, mut event: cqrs_es::persist::SerializedEvent) -> cqrs_es::persist::SerializedEvent {
        event.payload = (self.0.convert)(event.payload);
        event.event_version = self.0.to_version.to_owned();
        event
    }
}

/// The production upcasters, for cqrs-es.
pub fn for_cqrs() -> Vec<Box<dyn cqrs_es::persist::EventUpcaster>> {
    UPCASTERS.iter().map(|u| Box::new(CqrsUpcaster(u)) as Box<dyn cqrs_es::persist::EventUpcaster>).collect()
}
