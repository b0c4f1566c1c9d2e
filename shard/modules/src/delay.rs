//! XEP-0082 date-times (UTC, `2026-11-28T20:31:44.123456Z`) and the XEP-0203 `<delay/>`
//! element stamped on offline and archived messages.

/// Microseconds since the UNIX epoch, now.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Formats `us` (microseconds since the epoch) as an XEP-0082 UTC date-time with
/// six fraction digits, e.g. `2026-11-28T20:31:44.123456Z`.
pub(crate) fn format_utc(us: u64) -> String {
    let seconds = us / 1_000_000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        us % 1_000_000
    )
}

/// Parses an XEP-0082 date-time (the RFC 3339 profile: `Z` or a numeric offset, an
/// optional fraction) into microseconds since the epoch; `None` for anything else or
/// before 1970. The parsing is the `time` crate's, so no peer input is ever sliced at
/// a fixed offset here.
pub(crate) fn parse_utc(text: &str) -> Option<u64> {
    // RFC 3339 also allows a space between date and time; XEP-0082 does not.
    if text.as_bytes().get(10) != Some(&b'T') {
        return None;
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000).ok()
}

/// Appends `<delay xmlns='urn:xmpp:delay' from=.. stamp=../>` inside `message` (a
/// complete `<message>` element) before its end tag, or closes an empty element.
pub(crate) fn stamp_message(message: &[u8], from: &str, us: u64, out: &mut Vec<u8>) {
    let mut delay = b"<delay xmlns='urn:xmpp:delay'".to_vec();
    starling_wire::stanza::write_attribute(&mut delay, "from", from);
    starling_wire::stanza::write_attribute(&mut delay, "stamp", &format_utc(us));
    delay.extend_from_slice(b"/>");
    if message.ends_with(b"/>") && !message.ends_with(b"</message>") {
        out.extend_from_slice(&message[..message.len() - 2]);
        out.push(b'>');
        out.extend_from_slice(&delay);
        out.extend_from_slice(b"</message>");
    } else if let Some(end) = message.len().checked_sub(b"</message>".len()) {
        out.extend_from_slice(&message[..end]);
        out.extend_from_slice(&delay);
        out.extend_from_slice(&message[end..]);
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known instants format as XEP-0082 and parse back, with offsets and fractions.
    #[test]
    fn formats_and_parses_date_times() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000000Z");
        let us = 1_795_897_904_123_456; // 2026-11-28T20:31:44.123456Z
        assert_eq!(format_utc(us), "2026-11-28T20:31:44.123456Z");
        assert_eq!(parse_utc("2026-11-28T20:31:44.123456Z"), Some(us));
        assert_eq!(parse_utc("2026-11-28T20:31:44Z"), Some(us - 123_456));
        assert_eq!(parse_utc("2026-11-28T21:31:44.123456+01:00"), Some(us));
        assert_eq!(parse_utc("2000-02-29T00:00:00Z"), Some(951_782_400_000_000));
        for bad in ["", "2026-13-01T00:00:00Z", "2026-11-28 20:31:44Z", "2026-11-28T20:31:44", "x026-11-28T20:31:44Z"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    /// Regression (issue 9, found by trying a MAM query as a new user would): a
    /// multi-byte character where the old parser sliced a fixed byte offset panicked
    /// the core. Every such input is now `None`.
    #[test]
    fn multibyte_date_times_are_refused_not_panics() {
        for bad in ["2026-11-28T20:31:44+0\u{e9}00", "2026-11-28T20:31:44.\u{e9}Z", "\u{e9}026-11-28T20:31:44Z"] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        /// Any text parses to a value or `None`, never a panic; formatted instants
        /// parse back to themselves.
        #[test]
        fn parse_never_panics(text in "\\PC{0,40}", us in 0u64..4_000_000_000_000_000) {
            let _ = parse_utc(&text);
            proptest::prop_assert_eq!(parse_utc(&format_utc(us)), Some(us));
        }
    }

    /// The delay element goes inside the message, for both element forms.
    #[test]
    fn stamps_messages() {
        let mut out = Vec::new();
        stamp_message(b"<message to='a@x'><body>hi</body></message>", "x", 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message to='a@x'><body>hi</body><delay xmlns='urn:xmpp:delay' from='x' stamp='1970-01-01T00:00:00.000000Z'/></message>"
        );
        let mut out = Vec::new();
        stamp_message(b"<message to='a@x'/>", "x", 0, &mut out);
        assert!(String::from_utf8(out).unwrap().starts_with("<message to='a@x'><delay "));
    }
}
