//! Package checksums as ThingsBoard devices verify them (`fw_checksum`): lowercase hex of the
//! hash bytes, in Guava's byte order, which is what the ThingsBoard server sends. For the
//! integer-valued CRC32 and MurmurHash3-32 that is the little-endian bytes of the integer;
//! MurmurHash3-128 (x64) is its two 64-bit halves, each little-endian.

use std::io::Read;

use md5::Md5;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::model::ChecksumAlgorithm;

/// Hashes a stream as it passes: SHA-256 always (the package's identity), and the device
/// checksum when it can be computed incrementally.
pub struct Hashing {
    sha256: Sha256,
    device: Incremental,
}

enum Incremental {
    Md5(Md5),
    Sha384(Sha384),
    Sha512(Sha512),
    Crc32(crc32fast::Hasher),
    /// SHA-256 (the identity hash serves), or MurmurHash3, computed from the file afterwards.
    None,
}

impl Hashing {
    pub fn new(alg: ChecksumAlgorithm) -> Self {
        let device = match alg {
            ChecksumAlgorithm::Md5 => Incremental::Md5(Md5::new()),
            ChecksumAlgorithm::Sha384 => Incremental::Sha384(Sha384::new()),
            ChecksumAlgorithm::Sha512 => Incremental::Sha512(Sha512::new()),
            ChecksumAlgorithm::Crc32 => Incremental::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Sha256
            | ChecksumAlgorithm::Murmur3_32
            | ChecksumAlgorithm::Murmur3_128 => Incremental::None,
        };
        Self {
            sha256: Sha256::new(),
            device,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        match &mut self.device {
            Incremental::Md5(h) => h.update(data),
            Incremental::Sha384(h) => h.update(data),
            Incremental::Sha512(h) => h.update(data),
            Incremental::Crc32(h) => h.update(data),
            Incremental::None => {}
        }
    }

    /// The SHA-256, and the device checksum when it was computed here (`None`: read the file
    /// with `of_reader`).
    pub fn finish(self) -> (String, Option<String>) {
        let sha256 = hex(&self.sha256.finalize());
        let device = match self.device {
            Incremental::Md5(h) => Some(hex(&h.finalize())),
            Incremental::Sha384(h) => Some(hex(&h.finalize())),
            Incremental::Sha512(h) => Some(hex(&h.finalize())),
            Incremental::Crc32(h) => Some(hex(&h.finalize().to_le_bytes())),
            Incremental::None => None,
        };
        (sha256, device)
    }
}

/// The checksum of everything `r` yields, with `alg`.
pub fn of_reader(alg: ChecksumAlgorithm, r: &mut impl Read) -> std::io::Result<String> {
    Ok(match alg {
        ChecksumAlgorithm::Murmur3_32 => hex(&murmur3::murmur3_32(r, 0)?.to_le_bytes()),
        ChecksumAlgorithm::Murmur3_128 => hex(&murmur3::murmur3_x64_128(r, 0)?.to_le_bytes()),
        other => {
            let mut h = Hashing::new(other);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            let (sha256, device) = h.finish();
            device.unwrap_or(sha256)
        }
    })
}

/// Whether devices using the ThingsBoard SDK verify this algorithm reliably. The SDK writes
/// CRC32 and MurmurHash3 checksums without leading zero bytes, so about 1 image in 256 fails
/// its check for ever (see docs/ota.md).
pub fn sdk_safe(alg: ChecksumAlgorithm) -> bool {
    !matches!(
        alg,
        ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Murmur3_32 | ChecksumAlgorithm::Murmur3_128
    )
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(alg: ChecksumAlgorithm, data: &[u8]) -> String {
        of_reader(alg, &mut &data[..]).expect("read")
    }

    #[test]
    fn checksums_match_published_vectors_in_guava_byte_order() {
        use ChecksumAlgorithm::*;
        // RFC 1321, FIPS 180-2 test vectors.
        assert_eq!(sum(Md5, b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            sum(Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sum(Sha384, b"abc").starts_with("cb00753f45a35e8bb5a03d699ac65007"));
        assert!(sum(Sha512, b"abc").starts_with("ddaf35a193617abacc417349ae204131"));
        // CRC-32 of "123456789" is 0xCBF43926; Guava's HashCode writes an int little-endian.
        assert_eq!(sum(Crc32, b"123456789"), "2639f4cb");
        // MurmurHash3_x86_32("hello", 0) = 0x248BFA47.
        assert_eq!(sum(Murmur3_32, b"hello"), "47fa8b24");
        // MurmurHash3_x64_128("hello", 0): h1 = 0xCBD8A7B341BD9B02, h2 = 0x5B1E906A48AE1D19,
        // each little-endian, h1 first.
        assert_eq!(
            sum(Murmur3_128, b"hello"),
            "029bbd41b3a7d8cb191dae486a901e5b"
        );
    }

    #[test]
    fn streaming_and_reading_agree() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for alg in ChecksumAlgorithm::ALL {
            let mut h = Hashing::new(*alg);
            for chunk in data.chunks(4099) {
                h.update(chunk);
            }
            let (sha, device) = h.finish();
            assert_eq!(sha, sum(ChecksumAlgorithm::Sha256, &data));
            if let Some(d) = device {
                assert_eq!(d, sum(*alg, &data), "{alg:?}");
            }
        }
    }
}
