//! Procedural macros for ktstr. The generated code names only `::ktstr` paths.
