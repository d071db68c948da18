//! weft's agent protocol (proto/weft/agent/v1/agent.proto, DESIGN.md §6): the generated
//! messages, client and server, and conversions between them and the compiler's types.

use bytes::{Buf, BufMut, Bytes};

mod convert;

pub use convert::{
    ConvertError, DeltaEncoder, SnapshotEncoder, address as encode_address, encode_action, encode_tier, from_proto,
    parse_action, parse_address, parse_prefix, parse_tier, prefix as encode_prefix, snapshot, to_proto,
};

/// The messages and the agent's client.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/client/weft.agent.v1.rs"));
}

/// The controller's side of the service, sending `Encoded` messages.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/weft.agent.v1.rs"));
}

/// A `ControllerMessage` already encoded, as pieces: the controller encodes each update once
/// (a set change that a thousand nodes need is one piece shared by a thousand messages) and
/// protobuf merges the concatenation of encodings of one message type into one message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded(pub Vec<Bytes>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for piece in &self.0 {
            buf.put_slice(piece);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never received.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

impl Encoded {
    pub fn of(message: &v1::ControllerMessage) -> Encoded {
        Encoded(vec![Bytes::from(prost::Message::encode_to_vec(message))])
    }
}
