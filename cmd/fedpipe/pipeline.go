package main

// addPipelineCommands adds the commands that run or prepare the pipeline; they
// arrive with the stages they run.
func addPipelineCommands(map[string]command) {}
