//! prost's gRPC codec with a wider receive buffer. tonic reads each message
//! into a buffer of 8 KiB that then grows — reallocating and copying — for
//! anything larger; a 10 KiB cache value paid two such copies on every Put
//! (4% of the server's CPU per call in `perf`). 32 KiB holds the values
//! services typically cache at once; the buffer lives only while a request
//! is read, and anything larger still grows as before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes of a message read without growing the buffer.
const RECEIVE_BUFFER: usize = 32 * 1024;

/// tonic's default: when a streamed response yields to the runtime.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Used by the generated services (build.rs `codec_path`).
#[derive(Debug)]
pub struct WideProstCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WideProstCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for WideProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(RECEIVE_BUFFER, YIELD_THRESHOLD))
    }
}
