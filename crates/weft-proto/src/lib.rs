//! weft's agent protocol (proto/weft/agent/v1/agent.proto, DESIGN.md §6): the generated
//! messages, client and server, and conversions between them and the compiler's types.

use bytes::{Buf, BufMut, Bytes};

mod convert;
mod routes;

pub use convert::{
    ConvertError, DeltaEncoder, SnapshotEncoder, address as encode_address, encode_action, encode_tier, from_proto,
    parse_action, parse_address, parse_prefix, parse_tier, prefix as encode_prefix, snapshot, to_proto,
};
pub use routes::{EncodedRoutes, RouteFollower, RouteVersions};

/// The messages and the agent's client.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/client/weft.agent.v1.rs"));
}

/// The codec of the controller's side: protobuf, as tonic's own, with smaller stream buffers.
///
/// tonic encodes a stream's messages into one buffer until it holds 32 KiB (its default
/// yield threshold) and keeps that buffer, grown to its largest, for the stream's life; a
/// stream's decode buffer starts at 8 KiB. With thousands of agents connected, each with its
/// streams, that is memory held per agent (issue 23: about 100 KiB per connected agent in
/// all). The controller's messages are at most `weft_control::MESSAGE_BYTES` (4 KiB) for a
/// snapshot or a route table, mostly far less; an agent's are acks and flow reports. So a
/// stream's encoder yields after each such message and both buffers start small.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(std::marker::PhantomData)
    }
}

/// Initial capacity of a stream's buffers, and the bytes encoded before the encoder yields.
fn lean_buffer() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(1024, 4 * 1024)
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(lean_buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(lean_buffer())
    }
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
