"""Data: records, readers, synthetic data, image processor, tokenizer and processor, pipelines."""
