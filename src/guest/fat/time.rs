//! Timestamps. FAT stores local date and time fields with no zone; Linux's vfat reads them
//! as UTC unless mounted with `tz=` or `time_offset=` (its `fat_time_fat2unix` subtracts
//! the kernel's `sys_tz`, which is 0 on Linux systems), so they are shown as UTC here.
//!
//! Date: bits 15-9 years since 1980, 8-5 month, 4-0 day. Time: bits 15-11 hours, 10-5
//! minutes, 4-0 seconds / 2. Out-of-range fields are decoded as the kernel decodes them
//! (month 0 and day 0 count as 1; hours up to 31 and minutes up to 63 just add up), so a
//! damaged field gives the time Linux shows, never an error.

use super::super::GuestTime;

/// Days from 1970-01-01 to 1980-01-01.
const DAYS_DELTA: i64 = 365 * 10 + 2;
/// 2100 - 1980: not a leap year.
const YEAR_2100: i64 = 120;
/// Days before the first of each month (index 1..=12; 13..=15 as the kernel's table, 0).
const DAYS_BEFORE_MONTH: [i64; 16] = [
    0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 0, 0, 0,
];

/// `fat_time_fat2unix`: `time_cs` is the creation time's 10 ms units (0..=199).
pub fn to_unix(time: u16, date: u16, time_cs: u8) -> GuestTime {
    let year = i64::from(date >> 9);
    let month = usize::from((date >> 5) & 0xF).max(1);
    let day = i64::from(date & 0x1F).max(1) - 1;
    let mut leap_days = (year + 3) / 4;
    if year > YEAR_2100 {
        leap_days -= 1;
    }
    let leap_year = year & 3 == 0 && year != YEAR_2100;
    if leap_year && month > 2 {
        leap_days += 1;
    }
    let mut secs = i64::from(time & 0x1F) * 2
        + i64::from((time >> 5) & 0x3F) * 60
        + i64::from(time >> 11) * 3600;
    secs += (year * 365 + leap_days + DAYS_BEFORE_MONTH[month] + day + DAYS_DELTA) * 86400;
    GuestTime {
        secs: secs + i64::from(time_cs / 100),
        nsecs: u32::from(time_cs % 100) * 10_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds since the epoch of a UTC date and time, by counting days (an independent
    /// computation: no month table, no leap-day formula).
    fn civil(y: i64, mo: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0i64;
        for year in 1970..y {
            days += if leap(year) { 366 } else { 365 };
        }
        let lens = [
            31,
            if leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        days += lens[..(mo - 1) as usize].iter().sum::<i64>();
        days += i64::from(d - 1);
        days * 86400 + h * 3600 + mi * 60 + s
    }

    fn pack(y: i64, mo: u16, d: u16, h: u16, mi: u16, s: u16) -> (u16, u16) {
        (
            (h << 11) | (mi << 5) | (s / 2),
            (((y - 1980) as u16) << 9) | (mo << 5) | d,
        )
    }

    #[test]
    fn dates_from_1980_to_2107() {
        for (y, mo, d, h, mi, s) in [
            (1980, 1, 1, 0, 0, 0),
            (1999, 12, 31, 23, 59, 58),
            (2000, 2, 29, 12, 0, 0),
            (2000, 3, 1, 0, 0, 2),
            (2024, 7, 15, 8, 30, 44),
            (2100, 2, 28, 1, 1, 2),
            (2100, 3, 1, 0, 0, 0),
            (2107, 12, 31, 23, 59, 58),
        ] {
            let (t, dt) = pack(y, mo, d, h, mi, s);
            let got = to_unix(t, dt, 0);
            let want = civil(
                y,
                u32::from(mo),
                u32::from(d),
                h.into(),
                mi.into(),
                s.into(),
            );
            assert_eq!(
                (got.secs, got.nsecs),
                (want, 0),
                "{y}-{mo}-{d} {h}:{mi}:{s}"
            );
        }
    }

    #[test]
    fn centiseconds_and_damaged_fields() {
        let (t, d) = pack(2020, 5, 6, 7, 8, 10);
        let base = civil(2020, 5, 6, 7, 8, 10);
        assert_eq!(
            to_unix(t, d, 199),
            GuestTime {
                secs: base + 1,
                nsecs: 990_000_000
            }
        );
        assert_eq!(
            to_unix(t, d, 5),
            GuestTime {
                secs: base,
                nsecs: 50_000_000
            }
        );
        // Date 0: month and day 0 count as 1: 1980-01-01.
        assert_eq!(to_unix(0, 0, 0).secs, civil(1980, 1, 1, 0, 0, 0));
        // All ones never overflows or panics.
        let _ = to_unix(u16::MAX, u16::MAX, u8::MAX);
    }
}
