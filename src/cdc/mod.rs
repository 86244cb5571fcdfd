//! Change data capture (native engine). So far: the pgoutput decoder; the stream, the apply
//! and crash-safe progress follow (issue 3).

pub mod decode;
