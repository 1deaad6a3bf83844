// placeholder until the readers land
