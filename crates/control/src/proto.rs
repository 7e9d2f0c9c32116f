//! The generated `paychan.control.v1` messages, server and client (from
//! `proto/paychan/control/v1/control.proto`; see it for every field's meaning).

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::doc_markdown,
    clippy::large_enum_variant,
    clippy::derive_partial_eq_without_eq
)]

tonic::include_proto!("paychan.control.v1");

/// The encoded file descriptor set of `paychan.control.v1`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/paychan_control_v1_descriptor.bin"
));

/// The service's full gRPC name.
pub const SERVICE_NAME: &str = "paychan.control.v1.ChannelControl";

/// A `ChannelState` field by its name (`"CHANNEL_STATE_OPEN"`), for JSON output; an unknown
/// value by its number.
pub(crate) fn state_name<S: serde::Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
    match ChannelState::try_from(*v) {
        Ok(state) => s.serialize_str(state.as_str_name()),
        Err(_) => s.serialize_i32(*v),
    }
}
