//! Thumbnail generation with the `image` crate (PNG, JPEG, GIF, WebP), as pure functions.
//!
//! `scale` fits the image inside the requested box keeping its aspect ratio; `crop` fills the
//! box exactly, cutting the overflow evenly from both sides. Images are never enlarged: a box
//! larger than the original is shrunk to it. Thumbnails are PNG when the source has alpha or is
//! PNG or GIF, JPEG otherwise; with `animated=true` an animated GIF or WebP is answered with the
//! original (the spec prefers an animated answer and allows a larger one). Requested sizes move
//! up to one of a few boxes (`snap`), which bounds how many thumbnails a media can have.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use ruma::api::error::ErrorKind;

use crate::error::{Error, Result};

/// Largest width or height of an image that is thumbnailed.
const MAX_DIMENSION: u32 = 12_000;
/// Largest decoding buffer.
const MAX_ALLOC: u64 = 512 * 1024 * 1024;
/// Largest thumbnail width or height answered; larger requests are clamped.
pub const MAX_THUMBNAIL_DIMENSION: u32 = 1600;

/// The resizing method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    Scale = 0,
    Crop = 1,
}

/// What the client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub width: u32,
    pub height: u32,
    pub method: Method,
    pub animated: bool,
}

impl Wanted {
    /// Validates and clamps the query values: sizes must be positive.
    pub fn new(width: i64, height: i64, method: Option<&str>, animated: bool) -> Result<Self> {
        if width <= 0 || height <= 0 {
            return Err(Error::invalid_param(
                "width and height must be positive integers",
            ));
        }
        let method = match method {
            None | Some("scale") => Method::Scale,
            Some("crop") => Method::Crop,
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "unknown thumbnail method {other}"
                )))
            }
        };
        let clamp = |value: i64| value.min(i64::from(MAX_THUMBNAIL_DIMENSION)) as u32;
        let (width, height) = snap(clamp(width), clamp(height), method);
        Ok(Self {
            width,
            height,
            method,
            animated,
        })
    }
}

/// The boxes `scale` thumbnails are made in: the spec's recommended sizes and larger ones.
const SCALE_BOXES: [(u32, u32); 7] = [
    (32, 32),
    (96, 96),
    (320, 240),
    (640, 480),
    (800, 600),
    (1600, 1200),
    (MAX_THUMBNAIL_DIMENSION, MAX_THUMBNAIL_DIMENSION),
];
/// The long sides of `crop` thumbnails.
const CROP_SIDES: [u32; 6] = [32, 96, 320, 640, 800, MAX_THUMBNAIL_DIMENSION];
/// A `crop` thumbnail's short side is a multiple of its long side / this.
const CROP_STEPS: u32 = 32;

/// Moves a requested size (at most [`MAX_THUMBNAIL_DIMENSION`]) up to one of a few boxes that
/// hold it, so that each media has a bounded number of cached thumbnails however many sizes
/// clients ask for. The answer is never smaller than asked (spec: the sizes are minimums):
/// `scale` takes the first box of [`SCALE_BOXES`] holding the request; `crop` keeps the
/// requested aspect ratio to within one step, with the long side the next of [`CROP_SIDES`].
fn snap(width: u32, height: u32, method: Method) -> (u32, u32) {
    match method {
        Method::Scale => SCALE_BOXES
            .into_iter()
            .find(|(box_width, box_height)| *box_width >= width && *box_height >= height)
            .unwrap_or((MAX_THUMBNAIL_DIMENSION, MAX_THUMBNAIL_DIMENSION)),
        Method::Crop => {
            let (long, short) = (width.max(height), width.min(height));
            let side = CROP_SIDES
                .into_iter()
                .find(|side| *side >= long)
                .unwrap_or(MAX_THUMBNAIL_DIMENSION);
            let step = (side / CROP_STEPS).max(1);
            let scaled = (u64::from(short) * u64::from(side)).div_ceil(u64::from(long)) as u32;
            let snapped = scaled.div_ceil(step).saturating_mul(step).min(side);
            if width >= height {
                (side, snapped)
            } else {
                (snapped, side)
            }
        }
    }
}

/// Makes a thumbnail; `Ok(None)` means the original should be served as it is. Content that is
/// not an image is `400 M_UNKNOWN`; an image too large to decode is `413 M_TOO_LARGE`.
pub fn generate(
    original: &[u8],
    content_type: Option<&str>,
    wanted: Wanted,
) -> Result<Option<(Vec<u8>, &'static str)>> {
    let cannot = || Error::custom("M_UNKNOWN", "cannot generate a thumbnail of this content");
    let reader = ImageReader::new(Cursor::new(original))
        .with_guessed_format()
        .map_err(|_| cannot())?;
    let format = reader.format().ok_or_else(cannot)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
    ) {
        return Err(cannot());
    }
    let animated_source = matches!(format, ImageFormat::Gif | ImageFormat::WebP)
        && content_type.is_none_or(|kind| kind.starts_with("image/"));
    if wanted.animated && animated_source && is_animated(original, format) {
        return Ok(None);
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|error| match error {
        image::ImageError::Limits(_) => {
            Error::matrix(ErrorKind::TooLarge, "the image is too large to thumbnail")
        }
        _ => cannot(),
    })?;
    let thumbnail = resize(&image, wanted);
    let as_png = image.color().has_alpha() || matches!(format, ImageFormat::Png | ImageFormat::Gif);
    let mut out = Cursor::new(Vec::new());
    let content_type = if as_png {
        thumbnail
            .write_to(&mut out, ImageFormat::Png)
            .map_err(Error::internal)?;
        "image/png"
    } else {
        let rgb = DynamicImage::ImageRgb8(thumbnail.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
        rgb.write_with_encoder(encoder).map_err(Error::internal)?;
        "image/jpeg"
    };
    Ok(Some((out.into_inner(), content_type)))
}

/// The resized image: never larger than the original.
pub fn resize(image: &DynamicImage, wanted: Wanted) -> DynamicImage {
    let (width, height) = (image.width(), image.height());
    match wanted.method {
        Method::Scale => {
            if width <= wanted.width && height <= wanted.height {
                return image.clone();
            }
            image.thumbnail(wanted.width, wanted.height)
        }
        Method::Crop => {
            let target_width = wanted.width.min(width);
            let target_height = wanted.height.min(height);
            // The largest centred region with the target's aspect ratio.
            let (crop_width, crop_height) = if u64::from(width) * u64::from(target_height)
                > u64::from(height) * u64::from(target_width)
            {
                let crop_width = (u64::from(height) * u64::from(target_width)
                    / u64::from(target_height))
                .max(1) as u32;
                (crop_width, height)
            } else {
                let crop_height = (u64::from(width) * u64::from(target_height)
                    / u64::from(target_width))
                .max(1) as u32;
                (width, crop_height)
            };
            let cropped = image.crop_imm(
                (width - crop_width) / 2,
                (height - crop_height) / 2,
                crop_width,
                crop_height,
            );
            cropped.thumbnail_exact(target_width, target_height)
        }
    }
}

/// Whether a GIF or WebP has more than one frame (read without decoding the pixels of all).
fn is_animated(bytes: &[u8], format: ImageFormat) -> bool {
    use image::AnimationDecoder;
    match format {
        ImageFormat::Gif => image::codecs::gif::GifDecoder::new(Cursor::new(bytes))
            .map(|decoder| decoder.into_frames().take(2).count() > 1)
            .unwrap_or(false),
        ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
            .map(|decoder| decoder.has_animation())
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        }));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn dimensions(bytes: &[u8]) -> (u32, u32) {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn scale_fits_crop_fills_and_nothing_grows() {
        let original = png(400, 200);
        let check = |width, height, method, expected: (u32, u32)| {
            let wanted = Wanted::new(width, height, Some(method), false).unwrap();
            let (bytes, kind) = generate(&original, Some("image/png"), wanted)
                .unwrap()
                .unwrap();
            assert_eq!(kind, "image/png");
            assert_eq!(dimensions(&bytes), expected, "{width}x{height} {method}");
        };
        // Sizes move up to the next box: 320x240 for this scale, 320x320 for this crop.
        check(100, 100, "scale", (320, 160));
        check(100, 100, "crop", (320, 200));
        check(800, 800, "scale", (400, 200));
        check(800, 100, "crop", (400, 100));
    }

    #[test]
    fn requested_sizes_snap_to_a_few_boxes_never_smaller() {
        let snapped = |width, height, method| {
            let wanted = Wanted::new(width, height, Some(method), false).unwrap();
            (wanted.width, wanted.height)
        };
        assert_eq!(snapped(32, 32, "crop"), (32, 32));
        assert_eq!(snapped(96, 96, "crop"), (96, 96));
        assert_eq!(snapped(320, 240, "scale"), (320, 240));
        assert_eq!(snapped(800, 600, "scale"), (800, 600));
        assert_eq!(snapped(300, 10, "scale"), (320, 240));
        assert_eq!(snapped(700, 100, "scale"), (800, 600));
        assert_eq!(snapped(1200, 1500, "scale"), (1600, 1600));
        assert_eq!(snapped(200, 100, "crop"), (320, 160));
        assert_eq!(snapped(100, 200, "crop"), (160, 320));
        assert_eq!(snapped(33, 1, "crop"), (96, 3));
        let mut sizes = std::collections::BTreeSet::new();
        for width in 1..=1600 {
            for height in (1..=1600).step_by(7) {
                for method in ["scale", "crop"] {
                    let (w, h) = snapped(width, height, method);
                    assert!(w >= width as u32 && h >= height as u32, "{width}x{height}");
                    if method == "crop" {
                        // The aspect ratio is kept to within one step of the long side.
                        let (long, short) = (w.max(h), w.min(h));
                        let wanted = (width.min(height) as f64) / (width.max(height) as f64);
                        let step = f64::from((long / 32).max(1)) / f64::from(long);
                        assert!(f64::from(short) / f64::from(long) - wanted < step + 1e-9);
                    }
                    sizes.insert((w, h, method));
                }
            }
        }
        assert!(sizes.len() < 400, "{} sizes", sizes.len());
    }

    #[test]
    fn animated_gifs_stay_whole_only_when_asked() {
        let mut gif = Vec::new();
        {
            let mut encoder = image::codecs::gif::GifEncoder::new(&mut gif);
            for shade in [0u8, 255] {
                let frame = image::RgbaImage::from_pixel(40, 20, image::Rgba([shade, 0, 0, 255]));
                encoder.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        let animated = Wanted::new(10, 10, None, true).unwrap();
        assert!(generate(&gif, Some("image/gif"), animated)
            .unwrap()
            .is_none());
        let still = Wanted::new(10, 10, None, false).unwrap();
        let (bytes, kind) = generate(&gif, Some("image/gif"), still).unwrap().unwrap();
        assert_eq!(kind, "image/png");
        assert_eq!(dimensions(&bytes), (32, 16));
    }

    #[test]
    fn bad_requests_and_non_images_are_refused() {
        assert!(Wanted::new(0, 10, None, false).is_err());
        assert!(Wanted::new(10, -1, None, false).is_err());
        assert!(Wanted::new(10, 10, Some("stretch"), false).is_err());
        let wanted = Wanted::new(10, 10, None, false).unwrap();
        assert_eq!(Wanted::new(99_999, 10, None, false).unwrap().width, 1600);
        assert!(generate(b"plain text", Some("text/plain"), wanted).is_err());
    }
}
