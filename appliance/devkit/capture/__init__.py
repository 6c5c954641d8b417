"""Development kit: the capture lab, lab traffic, the synthetic capture, the flow benches."""
