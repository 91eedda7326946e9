//! The protobuf codec of the `kith.v1` service: prost's, except that a
//! request that does not decode is `INVALID_ARGUMENT` (the caller sent bad
//! bytes) rather than tonic's default `INTERNAL`, which would wrongly blame
//! the node.

use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost encoding with caller-blaming decode errors.
#[derive(Debug)]
pub struct KithCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for KithCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::new())
    }
}

impl<T, U> Codec for KithCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = KithDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KithDecoder(self.0.decoder())
    }
}

/// See [`KithCodec`].
#[derive(Debug)]
pub struct KithDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for KithDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() == Code::Internal {
                Status::invalid_argument(format!(
                    "malformed protobuf message: {}",
                    status.message()
                ))
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
