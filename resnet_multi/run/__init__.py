"""Running across environments: measured tables, the compare worker and its driver, convert, the GPU check."""
