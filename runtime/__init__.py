"""mlsched-lite runtime: bundle reader, decision engine, kernel path. Never imports TensorFlow."""
