"""What travels on the broker: message contracts and headers (`messages`), the image codec of
frames (`codec`), and GS1 element strings as printed on labels and read back (`gs1`).
Shared by every stage that produces or consumes them; imports nothing of the pipeline but `pipeline.core`."""
