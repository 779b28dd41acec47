"""The data layer: figshare `.mat` reading, the synthetic generator, prepare, download."""
