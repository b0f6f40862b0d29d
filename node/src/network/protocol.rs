//! Wire types, codecs and size limits of the two request-response protocols:
//! admission (`/spocnet/admit/1`) and pull sync (`/spocnet/sync/2`). The questions and
//! answers of set reconciliation inside a sync frame are `reconcile`'s types.

use std::time::Duration;

use libp2p::StreamProtocol;
use libp2p::request_response::{self, ProtocolSupport, cbor};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::reconcile::{self, Answer, Asked, Body, Item, Stream};

/// Protocol name of the admission exchange.
pub const ADMIT_PROTOCOL: StreamProtocol = StreamProtocol::new("/spocnet/admit/1");

/// Protocol name of the pull sync exchange.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/spocnet/sync/2");

/// Largest admission request or response we read.
pub const MAX_ADMIT_BYTES: u64 = 16 * 1024;

/// How long a request may wait for its response.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a node presents about itself when a connection opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitRequest {
    #[serde(with = "serde_bytes")]
    pub charter_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// The hash of the network's genesis charter (`Charter::genesis`). Two nodes that both
    /// give it compare it in place of the charter hash, so charters that differ only in
    /// their addresses admit each other; an older node that gives none is compared by its
    /// charter hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<serde_bytes::ByteArray<32>>,
}

/// The answer to an [`AdmitRequest`]: the responder presents itself in turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmitResponse {
    #[serde(with = "serde_bytes")]
    pub charter_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// As in [`AdmitRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<serde_bytes::ByteArray<32>>,
}

/// A pull request: "how do these ranges of logs compare with yours, and send me what
/// follows my heights in these logs". An honest one holds at most
/// [`reconcile::MAX_ASKED`] ranges and [`reconcile::MAX_WANTED`] logs, whatever the number
/// of logs, so it stays within [`MAX_HONEST_REQUEST_BYTES`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Ranges of logs, each with the requester's fingerprint of it.
    pub ranges: Vec<Asked>,
    /// Logs whose entries the requester wants, each with what it holds of it: its height,
    /// the hash of its entry there (a responder holding another entry at that seq sends
    /// its own, so the requester finds the fork) and whether it holds a proof of it.
    pub wanted: Vec<Item>,
    pub max_entries: u32,
    /// Asks for the responder's entries in the order it accepted them, in place of ranges
    /// (see [`reconcile::Stream`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
    /// The requester's clock when it sent the request, in ms since the epoch: the
    /// responder compares it with its own to see whether either clock is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
}

/// The answer to a [`SyncRequest`]; entries and proofs are opaque encoded bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Answers to the asked ranges whose fingerprints differ from the responder's.
    pub ranges: Vec<Answer>,
    pub entries: Vec<ByteBuf>,
    pub proofs: Vec<ByteBuf>,
    pub more: bool,
    /// The entries deflated together (see [`pack`]), in place of `entries`: entries of one
    /// network repeat their network id, authors, document ids and much of their text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<ByteBuf>,
    /// Where the responder's stream goes on, when the request asked for it and more
    /// remains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// The responder's clock when it answered, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
}

/// Why a packed batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("packed entries inflate past {0} bytes")]
    TooLarge(usize),
    #[error("packed entries are malformed: {0}")]
    Malformed(String),
}

/// Deflates encoded entries together, each as a u32 big-endian length and its bytes.
pub fn pack(entries: &[Vec<u8>]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    for e in entries {
        let len = u32::try_from(e.len()).unwrap_or(u32::MAX).to_be_bytes();
        // Writing into a Vec cannot fail.
        let _ = z.write_all(&len);
        let _ = z.write_all(e);
    }
    z.finish().unwrap_or_default()
}

/// Inflates a packed batch, reading at most `max_bytes` of it and refusing more than
/// `max_entries` entries, so that a small hostile frame cannot inflate without bound.
pub fn unpack(
    packed: &[u8],
    max_entries: usize,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, PackError> {
    use std::io::Read;
    let mut plain = Vec::new();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::DeflateDecoder::new(packed)
        .take(limit)
        .read_to_end(&mut plain)
        .map_err(|e| PackError::Malformed(e.to_string()))?;
    if plain.len() > max_bytes {
        return Err(PackError::TooLarge(max_bytes));
    }
    let mut entries = Vec::new();
    let mut rest = plain.as_slice();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| PackError::Malformed("a length is cut short".into()))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if len > tail.len() {
            return Err(PackError::Malformed("an entry is cut short".into()));
        }
        if entries.len() == max_entries {
            return Err(PackError::Malformed(format!(
                "more than {max_entries} entries"
            )));
        }
        let (entry, tail) = tail.split_at(len);
        entries.push(entry.to_vec());
        rest = tail;
    }
    Ok(entries)
}

/// Size of a CBOR item header announcing `n` (a length or an integer).
const fn header(n: usize) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

const fn text(s: &str) -> usize {
    header(s.len()) + s.len()
}

const fn bytes(len: usize) -> usize {
    header(len) + len
}

fn byte_list(list: &[ByteBuf]) -> usize {
    header(list.len()) + list.iter().map(|b| bytes(b.len())).sum::<usize>()
}

/// The most an integer (or a list's header) takes in CBOR.
const INT: usize = 9;
const KEY: usize = bytes(36);
const FINGERPRINT: usize = header(2) + text("xor") + bytes(32) + text("count") + INT;
const ITEM: usize = header(4)
    + text("log")
    + KEY
    + text("seq")
    + INT
    + text("tip")
    + bytes(32)
    + text("proven")
    + 1;
const RANGE: usize = header(2) + text("start") + KEY + text("end") + KEY;
const ASKED: usize = header(2) + text("range") + RANGE + text("fingerprint") + FINGERPRINT;
const PART: usize = header(2) + text("start") + KEY + text("fingerprint") + FINGERPRINT;
/// The longer of the two places in a stream: `{"From": u64}`, or `"Start"`.
const STREAM: usize = header(1) + text("Start") + INT;
/// A range answer without its items or parts: its index, and its body's variant.
const ANSWER: usize =
    header(2) + text("index") + INT + text("body") + header(1) + text("Items") + INT;

/// An upper bound of the CBOR encoding size of a request of `ranges` ranges and `wanted`
/// logs: every field of every element has a fixed most.
const fn request_len(ranges: usize, wanted: usize) -> usize {
    header(5)
        + text("ranges")
        + INT
        + ranges * ASKED
        + text("wanted")
        + INT
        + wanted * ITEM
        + text("max_entries")
        + INT
        + text("stream")
        + STREAM
        + text("time_ms")
        + INT
}

/// The largest request an honest node sends: the most ranges and wanted logs a request
/// holds, about 31 KiB, an eighth of [`MAX_REQUEST_BYTES`].
pub const MAX_HONEST_REQUEST_BYTES: usize =
    request_len(reconcile::MAX_ASKED, reconcile::MAX_WANTED);

/// The most the range answers of one response add to it: at most one answer to each
/// asked range, and a list of items is the largest answer.
pub const MAX_RANGE_ANSWERS_BYTES: usize =
    INT + reconcile::MAX_ASKED * (ANSWER + reconcile::MAX_ITEMS * ITEM);

const _: () = assert!(reconcile::PARTS * PART <= reconcile::MAX_ITEMS * ITEM);
const _: () = assert!(MAX_HONEST_REQUEST_BYTES * 8 <= MAX_REQUEST_BYTES as usize);

impl SyncRequest {
    /// An upper bound of the request's CBOR encoding size.
    pub fn encoded_len(&self) -> usize {
        request_len(self.ranges.len(), self.wanted.len())
    }
}

impl SyncResponse {
    /// An upper bound of the response's CBOR encoding size.
    pub fn encoded_len(&self) -> usize {
        let answers: usize = self
            .ranges
            .iter()
            .map(|a| {
                ANSWER
                    + match &a.body {
                        Body::Items(items) => items.len() * ITEM,
                        Body::Parts(parts) => parts.len() * PART,
                    }
            })
            .sum();
        header(8)
            + text("ranges")
            + INT
            + answers
            + text("entries")
            + byte_list(&self.entries)
            + text("proofs")
            + byte_list(&self.proofs)
            + text("more")
            + 1
            + self
                .packed
                .as_ref()
                .map_or(0, |p| text("packed") + bytes(p.len()))
            + self.next.map_or(0, |_| text("next") + INT)
            + self.time_ms.map_or(0, |_| text("time_ms") + INT)
    }
}

/// The admission behaviour, with small explicit size limits.
pub(super) type AdmitBehaviour = cbor::Behaviour<AdmitRequest, AdmitResponse>;

/// The sync behaviour, limited to `max_frame_bytes` in both directions.
pub(super) type SyncBehaviour = request_response::Behaviour<SyncCodec>;

/// What a node reads from an inbound sync stream: a request, or why it could not read one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    Request(SyncRequest),
    /// Over the size limit: the sender is cut off.
    Oversized(String),
    /// Malformed or cut short (a requester that gave up closes its stream early): the
    /// request is dropped, and costs the sender nothing more, since it is bounded.
    Unreadable(String),
}

/// libp2p's CBOR codec, except that a request it cannot read (over the size limit, or
/// malformed) reaches the behaviour as `Inbound::Unreadable` instead of failing inside
/// libp2p unseen, so that the behaviour can cut its sender off. It reads at most one byte
/// past the limit, so an oversized frame costs no more memory than the limit.
#[derive(Clone)]
pub struct SyncCodec {
    inner: cbor::codec::Codec<SyncRequest, SyncResponse>,
    request_limit: u64,
}

impl std::fmt::Debug for SyncCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCodec")
            .field("request_limit", &self.request_limit)
            .finish()
    }
}

impl SyncCodec {
    /// A request (log heights and proof ids) is small; a response carries entries.
    pub fn new(max_request_bytes: u64, max_response_bytes: u64) -> Self {
        SyncCodec {
            inner: cbor::codec::Codec::default()
                .set_request_size_maximum(max_request_bytes)
                .set_response_size_maximum(max_response_bytes),
            request_limit: max_request_bytes,
        }
    }
}

/// The largest sync request a node reads: eight times [`MAX_HONEST_REQUEST_BYTES`], so an
/// honest request never comes near it. With libp2p's 100 concurrent inbound streams per
/// connection, one connection can make the node hold at most 25 MiB of requests being
/// read.
pub const MAX_REQUEST_BYTES: u64 = 256 * 1024;

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound;
    type Response = SyncResponse;

    async fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Inbound>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt as _;
        let mut buf = Vec::new();
        io.take(self.request_limit.saturating_add(1))
            .read_to_end(&mut buf)
            .await?;
        if buf.len() as u64 > self.request_limit {
            return Ok(Inbound::Oversized(format!(
                "sync request over {} bytes",
                self.request_limit
            )));
        }
        let mut cursor = futures::io::Cursor::new(buf);
        Ok(match self.inner.read_request(protocol, &mut cursor).await {
            Ok(request) => Inbound::Request(request),
            Err(e) => Inbound::Unreadable(format!("malformed sync request: {e}")),
        })
    }

    async fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<SyncResponse>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        self.inner.read_response(protocol, io).await
    }

    async fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        request: Inbound,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        match request {
            Inbound::Request(r) => self.inner.write_request(protocol, io, r).await,
            Inbound::Oversized(_) | Inbound::Unreadable(_) => {
                Err(std::io::Error::other("not a request"))
            }
        }
    }

    async fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        response: SyncResponse,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        self.inner.write_response(protocol, io, response).await
    }
}

pub(super) fn admit_behaviour() -> AdmitBehaviour {
    let codec = cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_ADMIT_BYTES)
        .set_response_size_maximum(MAX_ADMIT_BYTES);
    request_response::Behaviour::with_codec(
        codec,
        [(ADMIT_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(ADMIT_TIMEOUT),
    )
}

pub(super) fn sync_behaviour(max_frame_bytes: usize) -> SyncBehaviour {
    let limit = u64::try_from(max_frame_bytes).unwrap_or(u64::MAX);
    request_response::Behaviour::with_codec(
        SyncCodec::new(limit.min(MAX_REQUEST_BYTES), limit),
        [(SYNC_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(SYNC_TIMEOUT),
    )
}

/// Decodes a sync frame as a node reads it from the wire: through the same codec, with the
/// same size limit. For fuzzing and for tools; the swarm does this itself.
pub fn decode_sync_frame(bytes: &[u8], max_frame_bytes: u64) -> Result<SyncFrame, std::io::Error> {
    use libp2p::request_response::Codec as _;
    let mut codec = SyncCodec::new(max_frame_bytes, max_frame_bytes);
    let request = futures::executor::block_on(
        codec.read_request(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(bytes)),
    )?;
    match request {
        Inbound::Request(r) => Ok(SyncFrame::Request(r)),
        Inbound::Oversized(_) | Inbound::Unreadable(_) => futures::executor::block_on(
            codec.read_response(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(bytes)),
        )
        .map(SyncFrame::Response),
    }
}

/// Encodes a sync frame as the codec writes it.
pub fn encode_sync_frame(frame: &SyncFrame) -> Result<Vec<u8>, std::io::Error> {
    use libp2p::request_response::Codec as _;
    let mut codec = cbor::codec::Codec::<SyncRequest, SyncResponse>::default();
    let mut wire = futures::io::Cursor::new(Vec::new());
    match frame {
        SyncFrame::Request(r) => {
            futures::executor::block_on(codec.write_request(&SYNC_PROTOCOL, &mut wire, r.clone()))?
        }
        SyncFrame::Response(r) => {
            futures::executor::block_on(codec.write_response(&SYNC_PROTOCOL, &mut wire, r.clone()))?
        }
    }
    Ok(wire.into_inner())
}

/// One sync frame, either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncFrame {
    Request(SyncRequest),
    Response(SyncResponse),
}

#[cfg(test)]
mod tests {

    #[test]
    fn packed_batches_round_trip_and_cannot_inflate_without_bound() {
        let entries = vec![vec![1u8; 300], Vec::new(), vec![7u8; 70_000]];
        let packed = super::pack(&entries);
        assert!(packed.len() < 1_000, "{}", packed.len());
        assert_eq!(super::unpack(&packed, 3, 80_000).unwrap(), entries);
        // A small frame that inflates to a megabyte is refused at the limit.
        let bomb = super::pack(&[vec![0u8; 1 << 20]]);
        assert!(bomb.len() * 50 < 1 << 20, "{}", bomb.len());
        assert!(matches!(
            super::unpack(&bomb, 10, 64 * 1024),
            Err(super::PackError::TooLarge(_))
        ));
        assert!(matches!(
            super::unpack(&packed, 2, 80_000),
            Err(super::PackError::Malformed(_))
        ));
        assert!(super::unpack(b"not deflate at all", 10, 1024).is_err());
        let mut cut = super::pack(&[vec![5u8; 100]]);
        cut.truncate(cut.len() / 2);
        assert!(super::unpack(&cut, 10, 1024).is_err());
    }
    use futures::executor::block_on;
    use libp2p::request_response::Codec as _;

    use super::*;

    #[test]
    fn encoded_len_bounds_the_real_encoding() -> std::io::Result<()> {
        use crate::reconcile::{Fingerprint, Key, Part, Range};
        let fingerprint = Fingerprint {
            xor: [5; 32],
            count: u64::MAX,
        };
        let item = Item {
            log: Key([7; 36]),
            seq: u64::MAX,
            tip: [9; 32],
            proven: true,
        };
        let asked = Asked {
            range: Range {
                start: Key([1; 36]),
                end: Some(Key([2; 36])),
            },
            fingerprint,
        };
        // The largest request an honest node sends.
        let request = SyncRequest {
            ranges: vec![asked; reconcile::MAX_ASKED],
            wanted: vec![item; reconcile::MAX_WANTED],
            max_entries: u32::MAX,
            stream: Some(Stream::From(u64::MAX)),
            time_ms: Some(u64::MAX),
        };
        let part = Part {
            start: Key([3; 36]),
            fingerprint,
        };
        let response = SyncResponse {
            ranges: vec![
                Answer {
                    index: u32::MAX,
                    body: Body::Items(vec![item; reconcile::MAX_ITEMS]),
                },
                Answer {
                    index: 1,
                    body: Body::Parts(vec![part; reconcile::PARTS]),
                },
            ],
            entries: vec![ByteBuf::from(vec![2; 300]), ByteBuf::from(vec![3; 70_000])],
            proofs: vec![ByteBuf::from(vec![4; 32])],
            more: true,
            packed: Some(ByteBuf::from(vec![6; 1_000])),
            next: Some(u64::MAX),
            time_ms: Some(u64::MAX),
        };
        let mut codec = cbor::codec::Codec::<SyncRequest, SyncResponse>::default();
        let mut wire = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_request(&SYNC_PROTOCOL, &mut wire, request.clone()))?;
        let request_len = wire.get_ref().len();
        assert!(request_len <= request.encoded_len());
        // Only list headers and `max_entries` are counted at their most.
        assert!(request.encoded_len() - request_len < 32, "{request_len}");
        assert_eq!(request.encoded_len(), MAX_HONEST_REQUEST_BYTES);
        let mut wire = futures::io::Cursor::new(Vec::new());
        block_on(codec.write_response(&SYNC_PROTOCOL, &mut wire, response.clone()))?;
        let response_len = wire.get_ref().len();
        assert!(response_len <= response.encoded_len());
        // Byte fields encode as CBOR byte strings, one header byte or a few per field;
        // integers and list headers are counted at their most.
        assert!(response.encoded_len() - response_len < 64, "{response_len}");
        Ok(())
    }

    #[test]
    fn oversized_and_cut_short_requests_are_told_apart() -> std::io::Result<()> {
        let request = SyncRequest {
            ranges: Vec::new(),
            wanted: vec![Item::absent(crate::reconcile::Key([1; 36])); 2],
            max_entries: 10,
            stream: None,
            time_ms: None,
        };
        let bytes = encode_sync_frame(&SyncFrame::Request(request.clone()))?;
        let read = |bytes: &[u8], limit: u64| {
            block_on(
                SyncCodec::new(limit, limit)
                    .read_request(&SYNC_PROTOCOL, &mut futures::io::Cursor::new(bytes)),
            )
        };
        assert_eq!(read(&bytes, 1024)?, Inbound::Request(request));
        assert!(matches!(read(&bytes, 16)?, Inbound::Oversized(_)));
        assert!(matches!(
            read(&bytes[..bytes.len() / 2], 1024)?,
            Inbound::Unreadable(_)
        ));
        assert!(matches!(read(&[], 1024)?, Inbound::Unreadable(_)));
        Ok(())
    }
}
