"""wsigym.data: slide bags, readers, datasets and the synth-c16 benchmark."""
