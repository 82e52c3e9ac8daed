"""Single-turn problems with verifiable answers: MAYE's JSONL files and the generated card suite."""
