"""The committed store: the one protocol by which synth writes any directory.

Every command that writes (`synth run`, `book`, `import`, `export`, `rescore`, `train`)
writes a `synth.store.store.Store`: claimed (new, empty, or its own kind's), leased
(`lease`), identified (inputs with fingerprints, settings), filled with units committed
as files plus a marker written last (`marker`), recovered and verified
(`recovery`). A command says only what its units are and how its files are named
(`layout.Layout`). Paths on any filesystem are `storage`'s; crash points for
fault-injection tests are `faults`'; the errors are `errors`'. It knows nothing about
manifests, models, Ray or what the files hold.
"""
