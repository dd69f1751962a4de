//! What stacking needs of each kind of weight data: an empty one like it, and appending.

use super::Quants;

impl Quants {
    /// The same kind with nothing in it.
    pub(super) fn empty_like(&self) -> Self {
        match self {
            Self::Q4 { .. } => Self::Q4 {
                nibbles: Vec::new(),
                m: Vec::new(),
            },
            Self::Q8 { .. } => Self::Q8 { quants: Vec::new() },
            Self::Q4K { .. } => Self::Q4K {
                nibbles: Vec::new(),
                scales: Vec::new(),
                mins: Vec::new(),
                dmin: Vec::new(),
            },
            Self::Q6K { .. } => Self::Q6K {
                nibbles: Vec::new(),
                high: Vec::new(),
                scales: Vec::new(),
            },
            Self::Q5 { .. } => Self::Q5 {
                nibbles: Vec::new(),
                high: Vec::new(),
                m: Vec::new(),
            },
            Self::Q5K { .. } => Self::Q5K {
                nibbles: Vec::new(),
                high: Vec::new(),
                scales: Vec::new(),
                mins: Vec::new(),
                dmin: Vec::new(),
            },
        }
    }

    /// Appends `other`'s data (of the same kind) after this one's.
    pub(super) fn append(&mut self, other: &Self) {
        match (self, other) {
            (Self::Q4 { nibbles, m }, Self::Q4 { nibbles: n2, m: m2 }) => {
                nibbles.extend_from_slice(n2);
                m.extend_from_slice(m2);
            }
            (Self::Q8 { quants }, Self::Q8 { quants: q2 }) => quants.extend_from_slice(q2),
            (
                Self::Q4K {
                    nibbles,
                    scales,
                    mins,
                    dmin,
                },
                Self::Q4K {
                    nibbles: n2,
                    scales: s2,
                    mins: m2,
                    dmin: d2,
                },
            ) => {
                nibbles.extend_from_slice(n2);
                scales.extend_from_slice(s2);
                mins.extend_from_slice(m2);
                dmin.extend_from_slice(d2);
            }
            (
                Self::Q6K {
                    nibbles,
                    high,
                    scales,
                },
                Self::Q6K {
                    nibbles: n2,
                    high: h2,
                    scales: s2,
                },
            ) => {
                nibbles.extend_from_slice(n2);
                high.extend_from_slice(h2);
                scales.extend_from_slice(s2);
            }
            (
                Self::Q5 { nibbles, high, m },
                Self::Q5 {
                    nibbles: n2,
                    high: h2,
                    m: m2,
                },
            ) => {
                nibbles.extend_from_slice(n2);
                high.extend_from_slice(h2);
                m.extend_from_slice(m2);
            }
            (
                Self::Q5K {
                    nibbles,
                    high,
                    scales,
                    mins,
                    dmin,
                },
                Self::Q5K {
                    nibbles: n2,
                    high: h2,
                    scales: s2,
                    mins: m2,
                    dmin: d2,
                },
            ) => {
                nibbles.extend_from_slice(n2);
                high.extend_from_slice(h2);
                scales.extend_from_slice(s2);
                mins.extend_from_slice(m2);
                dmin.extend_from_slice(d2);
            }
            _ => unreachable!("append is called on matrices of one kind"),
        }
    }
}
