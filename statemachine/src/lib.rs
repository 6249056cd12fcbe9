//! Amazon States Language: the model the flows are declared in, its JSON rendering, and
//! the local engine that interprets a definition in-process.
