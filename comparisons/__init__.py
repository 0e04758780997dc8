"""Side-by-side studies of captum_perturb on real models (not part of the library API)."""
