"""`rere demo`'s machinery (the command itself is rere.commands.demo): presets (the settings),
stages (each stage's work), base_model (SmolLM2 or the fallback), results (the table, the
timings) and run (`run_demo`, the stages in order)."""
