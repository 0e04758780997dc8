"""Language models through Captum's LLM API: the SST-2 prompt study and the main job's page."""
