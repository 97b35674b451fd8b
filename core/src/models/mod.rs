//! Model graphs built from [`crate::layers`]: the torchvision ResNet family, the
//! OpenAI DALL-E dVAE, the ResNet enhancer head, and the ViT/BEiT models.

pub mod beit;
pub mod conv_head;
pub mod dvae;
pub mod heads;
pub mod masking;
pub mod resnet;
#[cfg(test)]
mod tests_conv;
#[cfg(test)]
mod tests_vit;
pub mod vit;
