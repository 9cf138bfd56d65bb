//! Kubernetes resource quantities (`256Mi`, `1.5G`, `500m`, `2`, `1e9`),
//! computed exactly and rounded up the way Kubernetes' `Value()` and
//! `MilliValue()` round.
//!
//! ```text
//! quantity ::= sign? number suffix
//! number   ::= digits | digits "." digits? | "." digits
//! suffix   ::= "" | n | u | m | k | M | G | T | P | E          (powers of 1000)
//!            | Ki | Mi | Gi | Ti | Pi | Ei                     (powers of 1024)
//!            | ("e" | "E") sign? digits                        (powers of 10)
//! ```

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("invalid quantity {0:?} (expected a number with an optional suffix such as 256Mi, 1G or 500m)")]
    Syntax(String),
    #[error("quantity {0:?} must not be negative")]
    Negative(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

/// A memory quantity in bytes, rounded up to a whole byte.
pub fn bytes(text: &str) -> Result<u64, QuantityError> {
    parse(text)?.scaled_up(1, text)
}

/// A CPU quantity in thousandths of a core, rounded up.
pub fn millis(text: &str) -> Result<u64, QuantityError> {
    parse(text)?.scaled_up(1000, text)
}

/// `digits × 10^exp10 × 2^exp2`, exactly.
struct Exact {
    digits: u128,
    exp10: i64,
    exp2: u32,
}

impl Exact {
    /// `ceil(self × unit)` as a u64.
    fn scaled_up(&self, unit: u128, text: &str) -> Result<u64, QuantityError> {
        let large = || QuantityError::TooLarge(text.to_string());
        if self.digits == 0 {
            return Ok(0);
        }
        let mut num = self.digits.checked_mul(unit).ok_or_else(large)?;
        num = 2u128.checked_pow(self.exp2).and_then(|m| num.checked_mul(m)).ok_or_else(large)?;
        let value = if self.exp10 >= 0 {
            let exp = u32::try_from(self.exp10).map_err(|_| large())?;
            10u128.checked_pow(exp).and_then(|m| num.checked_mul(m)).ok_or_else(large)?
        } else {
            // 10^39 exceeds u128; any such divisor leaves less than 1.
            match u32::try_from(-self.exp10).ok().and_then(|e| 10u128.checked_pow(e)) {
                Some(den) => num.div_ceil(den),
                None => 1,
            }
        };
        u64::try_from(value).map_err(|_| large())
    }
}

fn parse(text: &str) -> Result<Exact, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_string());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(syntax());
    }
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(syntax)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6 {
                return Err(syntax());
            }
            (exp.parse::<i64>().map_err(|_| syntax())?, 0)
        }
    };
    // Leading zeros and trailing fraction zeros carry no value; dropping them
    // keeps long but exact spellings within u128.
    let frac = frac.trim_end_matches('0');
    let all = format!("{int}{frac}");
    let significant = all.trim_start_matches('0');
    let digits = if significant.is_empty() {
        0
    } else {
        significant.parse::<u128>().map_err(|_| QuantityError::TooLarge(text.to_string()))?
    };
    if negative && digits != 0 {
        return Err(QuantityError::Negative(text.to_string()));
    }
    let frac_len = i64::try_from(frac.len()).map_err(|_| syntax())?;
    Ok(Exact { digits, exp10: exp10 - frac_len, exp2 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory() {
        let cases: &[(&str, u64)] = &[
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("64Ki", 65536),
            ("2Ti", 2 << 40),
            ("1Ei", 1 << 60),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("1k", 1000),
            ("1G", 1_000_000_000),
            ("0.5", 1),
            ("500m", 1),
            ("1001m", 2),
            ("0", 0),
            ("+1Ki", 1024),
            (".5Ki", 512),
            ("1.", 1),
            ("1.000000000000000000000000000000000000000000000000Gi", 1 << 30),
            ("1e-50", 1),
            ("0.0000", 0),
            ("-0", 0),
        ];
        for &(text, want) in cases {
            assert_eq!(bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn cpu() {
        let cases: &[(&str, u64)] = &[
            ("500m", 500),
            ("2", 2000),
            ("0.5", 500),
            (".25", 250),
            ("1.5", 1500),
            ("100m", 100),
            ("1u", 1),
            ("0.0001", 1),
            ("1k", 1_000_000),
        ];
        for &(text, want) in cases {
            assert_eq!(millis(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid() {
        for text in ["", "Mi", "1 Gi", "1GB", "1gi", "1.2.3", ".", "1e", "1e+", "1ee3", "0x10", "1_000", "abc", "1Mi ", " 1", "1e9999999", "1K"] {
            assert_eq!(bytes(text), Err(QuantityError::Syntax(text.to_string())), "{text}");
        }
        assert_eq!(bytes("-1Gi"), Err(QuantityError::Negative("-1Gi".into())));
        assert_eq!(bytes("16Ei"), Err(QuantityError::TooLarge("16Ei".into())));
        assert_eq!(bytes("1e30"), Err(QuantityError::TooLarge("1e30".into())));
        assert_eq!(bytes("99999999999999999999999999999999999999999"), Err(QuantityError::TooLarge("99999999999999999999999999999999999999999".into())));
        assert_eq!(millis("18446744073709552"), Err(QuantityError::TooLarge("18446744073709552".into())));
    }
}
