//! XEP-0082 date-times (UTC, `2026-11-28T20:31:44.123456Z`) and the XEP-0203 `<delay/>`
//! element stamped on offline and archived messages.

/// Microseconds since the UNIX epoch, now.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Formats `us` (microseconds since the epoch) as an XEP-0082 UTC date-time.
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

/// Parses an XEP-0082 date-time (`Z` or a numeric offset, optional fraction) into
/// microseconds since the epoch; `None` for anything else or before 1970.
pub(crate) fn parse_utc(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<6}", &fraction[..digits.min(6)]);
        micros = padded.parse().ok()?;
        rest = &fraction[digits..];
    }
    let offset = match rest {
        "Z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let minutes = number_at(rest, 1..3)? * 60 + number_at(rest, 4..6)?;
            if rest.starts_with('+') {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    u64::try_from(seconds * 1_000_000 + micros).ok()
}

fn number_at(text: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = text.get(range)?;
    part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
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

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
