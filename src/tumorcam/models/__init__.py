"""The networks: the 2-D U-Net (`unet`), a user's own module (`user`), and inference over a split (`inference`)."""
