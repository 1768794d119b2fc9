"""Images in: decoding with bounded inflation, normalisation, data sets, synthetic pairs."""
