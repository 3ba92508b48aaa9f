# Shared by every rule: the conda environment and the params file each CLI call reads.
ENV = "../../envs/medtailor.yaml"
PARAMS = "params.yaml"
