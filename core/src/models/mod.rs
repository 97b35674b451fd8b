//! Model graphs built from [`crate::layers`]: the torchvision ResNet family, the
//! OpenAI DALL-E dVAE, the ResNet enhancer head, and the ViT/BEiT models.

pub mod conv_head;
pub mod dvae;
pub mod resnet;
#[cfg(test)]
mod tests_conv;
pub mod beit;
pub mod heads;
pub mod masking;
pub mod vit;
#[cfg(test)]
mod tests_vit;
